"""Training recipe of SLED (models/sled.py): the energy-distance head's loss and the stop loss on
Flow-VAE latents, prompt pairs and CFG text dropout; validation speaks sentences and scores them
with the transcriber the harness hands in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import audio, registry
from models.data.dataset import Feature, SpeechDataset
from models.sled import SLED, SLEDConfig, diagonal_alignment, energy_distance
from models.training import Scorers, Task, task, unwrap
from models.training.latents import codec_latents, fit_latent_statistics, voice_sequences


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
        """The latent statistics and, for aligned positions, the text rate (models/training/latents.py)."""
        self.model_config["fitted"] = fit_latent_statistics(train_set, self.config.latent_dim,
                                                            self.config.aligned_positions)
        self.model_config.setdefault("frontend", train_set.frontend.to_dict())
        self.config = SLEDConfig.from_dict(self.model_config)

    def build(self) -> SLED:
        return SLED(self.config)

    def sequences(self, model: SLED, batch: dict, step: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list]:
        """Per-item (text ids, latents, anchor); some become [other utterance of the voice, this one], whose
        anchor places the prompt's transcript when the config trains `anchored_pairs` (else None)."""
        c = self.config
        texts, features, anchors = voice_sequences(batch, c.prompt_pairs, c.text_dropout, model.null_id,
                                                   model.frontend.symbols.encode(" "), step)
        return texts, [f[:, : c.latent_dim] for f in features], anchors if c.anchored_pairs else None

    def losses(self, model: nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict, None]:
        core = unwrap(model)
        texts, latents, anchors = self.sequences(core, batch, step)
        if model is core:
            out = core.loss(texts, latents, anchors)
        else:  # DDP: the forward must go through the wrapper so gradients are averaged
            out = model(texts, latents, anchors)
        loss = out["generative"] + out["stop"]
        logs = {k: v.item() for k, v in out.items()}
        if not model.training:  # how much the text helps: the loss gap to the CFG null text
            null = core.loss([torch.full_like(t, core.null_id) for t in texts], latents, anchors)
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
