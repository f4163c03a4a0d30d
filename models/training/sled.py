"""Training recipe of SLED (models/sled.py): the energy-distance head's loss and the stop loss on
Flow-VAE latents, prompt pairs and CFG text dropout; validation speaks sentences and scores them
with the transcriber the harness hands in."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import audio, registry
from models.data.dataset import MEL, Feature, SpeechDataset
from models.sled import SLED, SLEDConfig, diagonal_alignment, energy_distance
from models.training import Scorers, Task, task


def codec_latents(codec: str) -> Feature:
    """The Flow-VAE's posterior (mu; log sigma) from the cached mel: a (2 x latent_dim, frames) feature.

    The cache name carries a hash of the encoder's weights (the latents depend on nothing
    else), so a retrained encoder never reuses stale latents, while a published copy or a
    decoder-only fine-tune does.
    """
    model, _, _ = registry.load_model(codec, "cpu")
    digest = hashlib.sha256()
    for name, tensor in sorted(model.encoder.state_dict().items()):
        digest.update(name.encode() + tensor.float().numpy().tobytes())

    def compute(mel: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mu, log_sigma = model.encode(mel[None])
        return torch.cat([mu[0], log_sigma[0]])

    return Feature(f"latents-{digest.hexdigest()[:10]}", compute, MEL.frames_per_second / model.config.downsample,
                   source=MEL)


def marginal_energy(frames: torch.Tensor, seed: int) -> float:
    """The energy loss of a predictor that ignores all context and draws two random frames of the
    data (frames: normalized, (n, latent_dim)): the yardstick that makes the loss comparable across
    latent sizes (it grows like sqrt(2 x latent_dim)); `skill` = 1 - loss / this."""
    generator = torch.Generator().manual_seed(seed)
    x, x_prime = (frames[torch.randperm(len(frames), generator=generator)] for _ in range(2))
    return energy_distance(x, x_prime, frames).mean().item()


@task("sled")
class SLEDTask(Task):
    """Whole utterances (no crops): text + latents, paired into voice-continuation sequences."""

    def __init__(self, model_config: dict):
        super().__init__(model_config)
        self.config = SLEDConfig.from_dict(model_config)

    def feature(self) -> Feature:
        return codec_latents(self.config.codec)

    def prepare(self, train_set: SpeechDataset) -> None:
        """Per-dimension mean and std of the posterior means, and the frames-per-token rate for
        aligned positions, from up to 400 training utterances."""
        rng = np.random.default_rng(0)
        picks = [train_set[int(i)] for i in rng.choice(len(train_set), min(400, len(train_set)), replace=False)]
        frames = torch.cat([item["features"][: self.config.latent_dim].T for item in picks])
        text_rate = round(len(frames) / sum(len(item["text"]) for item in picks), 4)
        self.model_config["fitted"] = {"latent_mean": [round(float(v), 5) for v in frames.mean(0)],
                                       "latent_std": [round(float(v), 5) for v in frames.std(0).clamp_min(1e-3)],
                                       "text_rate": text_rate if self.config.aligned_positions else None}
        self.model_config.setdefault("frontend", train_set.frontend.to_dict())
        self.config = SLEDConfig.from_dict(self.model_config)

    def build(self) -> SLED:
        return SLED(self.config)

    def sequences(self, model: SLED, batch: dict, step: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-item (text ids, latents); some become [other utterance of the voice, this one]."""
        c = self.config
        generator = torch.Generator().manual_seed(step * 7919 + 17)
        n = len(batch["ids"])
        texts = [batch["text"][i, : batch["text_lengths"][i]] for i in range(n)]
        latents = [batch["features"][i, : c.latent_dim, : batch["feature_lengths"][i]].T for i in range(n)]
        speakers = batch["speaker"].tolist()
        space = torch.tensor(model.frontend.symbols.encode(" "), device=texts[0].device)
        out_texts, out_latents = [], []
        for i in range(n):
            text, z = texts[i], latents[i]
            others = [j for j in range(n) if j != i and speakers[j] == speakers[i]]
            if others and float(torch.rand(1, generator=generator)) < c.prompt_pairs:
                j = others[int(torch.randint(len(others), (1,), generator=generator))]
                text, z = torch.cat([texts[j], space, text]), torch.cat([latents[j], z])
            if float(torch.rand(1, generator=generator)) < c.text_dropout:
                text = torch.full_like(text, model.null_id)
            out_texts.append(text)
            out_latents.append(z)
        return out_texts, out_latents

    def losses(self, model: nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict, None]:
        core = model.module if hasattr(model, "module") else model
        texts, latents = self.sequences(core, batch, step)
        if model is core:
            out = core.loss(texts, latents)
        else:  # DDP: the forward must go through the wrapper so gradients are averaged
            out = model(texts, latents)
        loss = out["generative"] + out["stop"]
        logs = {k: v.item() for k, v in out.items()}
        if not model.training:  # how much the text helps: the loss gap to the CFG null text
            null = core.loss([torch.full_like(t, core.null_id) for t in texts], latents)
            logs["text_gain"] = null["generative"].item() - logs["generative"]
            logs["skill"] = 1.0 - logs["generative"] / marginal_energy(core.normalize(torch.cat(latents)), step)
        return loss, logs, None

    def validate(self, model: nn.Module, items: list[dict], out_dir: Path, scorers: Scorers) -> dict:
        """Speak validation sentences (no prompt, cfg 2, seed 0), measure how closely the generated
        frames follow the text (`diagonal_alignment`) and, with a transcriber, the WER."""
        if not items:
            return {}
        codec, _, _ = registry.load_model(self.config.codec, str(next(model.parameters()).device))
        scored = scorers.transcribe is not None and scorers.word_errors is not None
        errors, words, frames, aligned = 0, 0, [], []
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in items:
            ids = model.frontend.symbols.encode(item["phonemes"]) if model.frontend.mode == "phoneme" and item.get(
                "phonemes") else model.frontend.encode([item["normalized_text"]])[0]
            z = list(model.generate(ids, cfg=2.0, seed=0))
            frames.append(len(z))
            if not z:
                continue
            aligned.append(diagonal_alignment(model.text_saliency(torch.tensor(ids), torch.stack(z))))
            wav = codec.decode_wav(torch.stack(z))
            audio.save_audio(out_dir / f"{item['id']}.wav", wav)
            if scored:
                wrong, count = scorers.word_errors(item["normalized_text"], scorers.transcribe(wav, audio.SAMPLE_RATE))
                errors, words = errors + wrong, words + count
        metrics = {"frames": float(np.mean(frames)), "alignment": float(np.mean(aligned)) if aligned else 0.0}
        return {"wer": errors / max(1, words), **metrics} if scored else metrics
