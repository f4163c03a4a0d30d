"""Training recipe of SpeakerBeam (models/speaker_beam.py): mixtures made on the fly from random waveform
crops of the corpus.

Each item's target is its own crop (with `recording_conditions`, of the utterance under a random recording
condition, models/data/augment.py: the voices of one mixture under different ones); its interferer is
another item's crop in the same batch, of another speaker, scaled to an SIR drawn from `sir_range` (issue
41's test recipe: -5 ... 5 dB); with `solo_probability` there is none. The enrollment is a 3 s window of
another training utterance of the target's speaker (models/training/speakers.py), as at inference. The loss
is the negative SI-SDR of the extracted waveform (Le Roux et al., 2019), over each item's real samples.
Validation extracts whole validation utterances from fixed mixtures and reports SI-SDR and its improvement
over the mixture.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import audio, registry
from models.data.augment import WAV_CONDITIONS
from models.data.dataset import Feature, SpeechDataset
from models.data.manifest import resolve_audio
from models.speaker_beam import SpeakerBeam, SpeakerBeamConfig
from models.training import WAVEFORM, Scorers, Task, step_generator, task, unwrap
from models.training.speakers import SpeakerWindows

CEILING_DB = 30.0  # thresholded SI-SDR (Wisdom et al., 2020): an item already this clean pulls no further


def si_sdr(estimate: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SDR in dB per item (Le Roux et al., 2019), soft-capped at CEILING_DB: (batch, samples)
    each, `valid` (batch, samples) marks the real samples; both zero-mean over them."""
    n = valid.sum(-1, keepdim=True).clamp_min(1)
    estimate = (estimate - (estimate * valid).sum(-1, keepdim=True) / n) * valid
    target = (target - (target * valid).sum(-1, keepdim=True) / n) * valid
    scale = (estimate * target).sum(-1, keepdim=True) / target.square().sum(-1, keepdim=True).clamp_min(1e-8)
    projection = scale * target
    signal = projection.square().sum(-1)
    error = (estimate - projection).square().sum(-1) + 10 ** (-CEILING_DB / 10) * signal
    return 10 * torch.log10(signal.clamp_min(1e-8) / error.clamp_min(1e-8))


def mix(target: torch.Tensor, interferer: torch.Tensor, valid: torch.Tensor, sir_db: torch.Tensor) -> torch.Tensor:
    """target + interferer scaled so that 10 log10(P_target / P_interferer) = sir_db per item (powers over
    the target's real samples); the two brought below a peak of 0.99 together, so the ratio holds."""
    power = lambda x: (x.square() * valid).sum(-1) / valid.sum(-1).clamp_min(1)  # noqa: E731
    gain = torch.sqrt(power(target) / (power(interferer).clamp_min(1e-10) * 10 ** (sir_db / 10)))
    mixture = target + gain[:, None] * interferer * valid
    peak = mixture.abs().amax(-1).clamp_min(0.99) / 0.99
    return mixture / peak[:, None], target / peak[:, None]


@task("speaker_beam")
class SpeakerBeamTask(Task):
    def __init__(self, model_config: dict):
        super().__init__(model_config)
        self.config = SpeakerBeamConfig.from_dict(model_config)

    def feature(self) -> Feature:
        return WAV_CONDITIONS if self.config.recording_conditions else WAVEFORM

    def prepare(self, train_set: SpeechDataset) -> None:
        """Each training utterance's speaker-window embeddings: what the enrollments are drawn from."""
        encoder, _, _ = registry.load_model(self.config.speaker_encoder, "cpu")
        self.model_config["speaker_dim"] = encoder.embedding_dim
        self.model_config["tasks"] = list(self.config.tasks)  # what the menus read from the checkpoint
        self.config = SpeakerBeamConfig.from_dict(self.model_config)
        self.windows = SpeakerWindows(train_set, self.config.speaker_encoder)
        self.train_set = train_set  # validation's interferers are training utterances

    def build(self) -> SpeakerBeam:
        return SpeakerBeam(self.config)

    def mixtures(self, batch: dict, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mixture, target, valid) (batch, samples): each item's crop plus another speaker's."""
        c, generator = self.config, step_generator(step, 17)
        wav, lengths = batch["features"][:, 0], batch["feature_lengths"]
        valid = (torch.arange(wav.shape[-1], device=wav.device)[None] < lengths[:, None].to(wav.device)).float()
        target, speakers, size = wav * valid, batch["speaker"].tolist(), len(wav)
        partners = []
        for i in range(size):
            others = [j for j in range(size) if speakers[j] != speakers[i]]
            partners.append(others[int(torch.randint(len(others), (1,), generator=generator))] if others else None)
        interferer = torch.stack([target[j] if j is not None else torch.zeros_like(target[i])
                                  for i, j in enumerate(partners)])
        solo = (torch.rand(size, generator=generator) < c.solo_probability).to(wav.device)
        interferer[solo] = 0.0
        low, high = c.sir_range
        sir = (low + (high - low) * torch.rand(size, generator=generator)).to(wav.device)
        mixture, target = mix(target, interferer, valid, sir)
        return mixture, target, valid

    def losses(self, model: nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict, None]:
        mixture, target, valid = self.mixtures(batch, step)
        device = next(model.parameters()).device
        mixture, target, valid = mixture.to(device), target.to(device), valid.to(device)
        estimate = model(mixture, self.windows.draw(batch, step).to(device)).float()
        scores = si_sdr(estimate, target, valid)
        with torch.no_grad():
            improvement = scores - si_sdr(mixture, target, valid)
        return -scores.mean(), {"si_sdr": scores.mean().item(), "si_sdr_i": improvement.mean().item()}, None

    @torch.no_grad()
    def validate(self, model: nn.Module, items: list[dict], out_dir: Path, scorers: Scorers) -> dict:
        """Whole validation utterances, each mixed at 0 dB with a fixed training utterance of another
        speaker and extracted with an enrollment window of one of its speaker's training utterances:
        SI-SDR and its improvement over the mixture (`extract_` columns, apart from the loss's)."""
        core, out_dir = unwrap(model), Path(out_dir)
        device = next(core.parameters()).device
        rng, scores, gains = random.Random(0), [], []
        for n, item in enumerate(items):
            others = [row for row in self.train_set.rows if row["speaker"] != item["speaker"]]
            if not others:
                continue
            other = rng.choice(others)
            wav = audio.load_audio(resolve_audio(item["manifest"], item["path"]), audio.SAMPLE_RATE, max_seconds=None)
            interferer = audio.load_audio(resolve_audio(self.train_set.manifest, other["path"]), audio.SAMPLE_RATE,
                                          max_seconds=None)
            target = torch.from_numpy(wav)[None]
            valid = torch.ones_like(target)
            interferer = torch.from_numpy(np.resize(interferer, len(wav)))[None]  # looped or cut to the target's
            mixture, target = mix(target, interferer, valid, torch.zeros(1))
            pool = self.windows.of_voice(item["speaker"])
            embedding = pool[n % len(pool)][1][0][None]
            estimate = core(mixture.to(device), embedding.to(device)).float().cpu()
            out_dir.mkdir(parents=True, exist_ok=True)
            audio.save_audio(out_dir / f"{item['id']}.wav", estimate[0].numpy())
            scores.append(si_sdr(estimate, target, valid).item())
            gains.append(scores[-1] - si_sdr(mixture, target, valid).item())
        return {"extract_si_sdr": float(np.mean(scores)), "extract_si_sdr_i": float(np.mean(gains))} if scores else {}
