"""What the recipes of latent-sequence models (SLED, KALL-E) share: the codec's posterior as a cached
training feature, the latent statistics they fit, and voice-continuation sequences."""

from __future__ import annotations

import numpy as np
import torch

from models import registry
from models.data.dataset import MEL, Feature, SpeechDataset


def codec_latents(codec: str) -> Feature:
    """A latent codec's posterior (mu; log sigma) from the cached mel: a (2 x latent_dim, frames) feature.

    The cache name carries the codec's `posterior_key` (for the Flow-VAE a hash of its encoder's
    weights, the only thing the latents depend on), so a retrained encoder never reuses stale latents,
    while a published copy or a decoder-only fine-tune does.
    """
    model, _, _ = registry.load_model(codec, "cpu")

    def compute(mel: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mu, log_sigma = model.posterior(mel[None])
        return torch.cat([mu[0], log_sigma[0]])

    return Feature(f"latents-{model.posterior_key}", compute, model.frame_rate, source=MEL)


def fit_latent_statistics(train_set: SpeechDataset, latent_dim: int, aligned: bool) -> dict:
    """Per-dimension mean and std of the posterior means, and the frames-per-symbol rate for aligned
    positions (None unless `aligned`), from up to 400 training utterances: a config's `fitted`."""
    rng = np.random.default_rng(0)
    picks = [train_set[int(i)] for i in rng.choice(len(train_set), min(400, len(train_set)), replace=False)]
    frames = torch.cat([item["features"][:latent_dim].T for item in picks])
    text_rate = round(len(frames) / sum(len(item["text"]) for item in picks), 4)
    return {"latent_mean": [round(float(v), 5) for v in frames.mean(0)],
            "latent_std": [round(float(v), 5) for v in frames.std(0).clamp_min(1e-3)],
            "text_rate": text_rate if aligned else None}


def voice_sequences(batch: dict, prompt_pairs: float, text_dropout: float, null_id: int, space: list[int],
                    step: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple[int, int] | None]]:
    """Per item (text ids, features (frames, channels), anchor); with probability `prompt_pairs` an item
    becomes [another utterance of its voice in the batch, this one] (text joined by `space`), so voice
    continuation is in-distribution, and its anchor is (the prompt's symbols with the space, its frames),
    as a TTS request's prompt has (None for a single utterance); with probability `text_dropout` its text
    becomes null tokens (classifier-free guidance)."""
    generator = torch.Generator().manual_seed(step * 7919 + 17)
    n = len(batch["ids"])
    texts = [batch["text"][i, : batch["text_lengths"][i]] for i in range(n)]
    features = [batch["features"][i, :, : batch["feature_lengths"][i]].T for i in range(n)]
    speakers = batch["speaker"].tolist()
    space = torch.tensor(space, device=texts[0].device)
    out_texts, out_features, anchors = [], [], []
    for i in range(n):
        text, z, anchor = texts[i], features[i], None
        others = [j for j in range(n) if j != i and speakers[j] == speakers[i]]
        if others and float(torch.rand(1, generator=generator)) < prompt_pairs:
            j = others[int(torch.randint(len(others), (1,), generator=generator))]
            text, z = torch.cat([texts[j], space, text]), torch.cat([features[j], z])
            anchor = (len(texts[j]) + len(space), len(features[j]))
        if float(torch.rand(1, generator=generator)) < text_dropout:
            text = torch.full_like(text, null_id)
        out_texts.append(text)
        out_features.append(z)
        anchors.append(anchor)
    return out_texts, out_features, anchors
