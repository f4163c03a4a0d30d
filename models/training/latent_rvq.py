"""Training recipe of the latent RVQ (models/latent_rvq.py): the latent codec's posterior means of the training
audio, standardized; codebooks from residual k-means of up to KMEANS_FRAMES of them, then refined by gradient
on the codebook loss (each codeword pulled to the residuals it is nearest to: online k-means over all the
data); validation reconstructs utterances through all layers and through the first ones, with PESQ-wb and
STOI when the harness hands in signal scorers."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import nn

from models import audio, registry
from models.data.dataset import Feature, SpeechDataset
from models.data.manifest import resolve_audio
from models.latent_rvq import LatentRVQ, LatentRVQConfig, nearest
from models.modules import sequence_mask
from models.training import Scorers, SignalScores, Task, task, unwrap
from models.training.latents import codec_latents
from models.training.quantization import perplexity, residual_kmeans

KMEANS_FRAMES = 60_000  # latent frames the initial residual k-means sees
STATISTICS_UTTERANCES = 400


@task("latent_rvq")
class LatentRVQTask(Task):
    def __init__(self, model_config: dict):
        super().__init__(model_config)
        self.config = LatentRVQConfig.from_dict(model_config)
        self.initial: torch.Tensor | None = None

    def feature(self) -> Feature:
        return codec_latents(self.config.latent_codec)

    def prepare(self, train_set: SpeechDataset) -> None:
        """The codec's latent size and rate, the per-dimension standardization of the posterior means, and
        residual k-means codebooks over a seeded sample of the training frames."""
        codec, _, _ = registry.load_model(self.config.latent_codec, "cpu")
        rows = list(range(len(train_set)))
        random.Random(0).shuffle(rows)
        frames, sample = [], 0
        for index in rows:
            mu = train_set[index]["features"][: codec.latent_dim].T  # (frames, latent_dim)
            frames.append(mu)
            sample += len(mu)
            if sample >= KMEANS_FRAMES:
                break
        x = torch.cat(frames)
        statistics = torch.cat(frames[:STATISTICS_UTTERANCES])
        mean, std = statistics.mean(0), statistics.std(0).clamp_min(1e-3)
        self.model_config["fitted"] = {"latent_dim": codec.latent_dim, "frame_rate": float(codec.frame_rate),
                                       "mean": [round(float(v), 5) for v in mean],
                                       "std": [round(float(v), 5) for v in std]}
        self.config = LatentRVQConfig.from_dict(self.model_config)
        c = self.config
        size = min(c.codebook_size, len(x))  # a tiny corpus has fewer frames than codewords
        self.initial = residual_kmeans((x - mean) / std, c.codebooks, size, seed=0)

    def build(self) -> LatentRVQ:
        model = LatentRVQ(self.config)
        if self.initial is not None:
            with torch.no_grad():
                model.codewords[:, : self.initial.shape[1]].copy_(self.initial)
        return model

    def losses(self, model: nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict, None]:
        core = unwrap(model)
        dim = core.config.fitted.latent_dim
        features, lengths = batch["features"], batch["feature_lengths"]
        valid = sequence_mask(lengths, features.shape[-1])
        x = core.standardize(features[:, :dim].transpose(1, 2)[valid])  # (n, dim) real frames
        residual, loss, logs = x, x.new_zeros(()), {}
        energy = x.pow(2).sum().clamp_min(1e-8)
        for layer, codebook in enumerate(core.codewords):
            index = nearest(residual, codebook.detach())
            chosen = codebook[index]
            loss = loss + (chosen - residual).pow(2).sum(-1).mean()
            residual = residual - chosen.detach()
            logs[f"perplexity_{layer + 1}"] = perplexity(index, core.codebook_size)
        logs["energy_left"] = float(residual.pow(2).sum() / energy)
        logs["codebook"] = loss.item()
        return loss, logs, None

    def validate(self, model: nn.Module, items: list[dict], out_dir: Path, scorers: Scorers) -> dict:
        scores = SignalScores(out_dir, scorers)
        layer_sets = sorted({model.num_codebooks, min(3, model.num_codebooks)})
        for item in items:
            wav = audio.load_audio(resolve_audio(item["manifest"], item["path"]), audio.SAMPLE_RATE, max_seconds=None)
            tokens = model.encode_wav(wav)
            for layers in layer_sets:
                suffix = "" if layers == model.num_codebooks else f"_q{layers}"
                scores.add(item["id"], wav, model.decode_tokens(tokens[:layers])[: len(wav)], suffix)
        return scores.means()
