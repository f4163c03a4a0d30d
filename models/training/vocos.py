"""Training recipe of the Vocos vocoder (models/vocos.py), on random waveform crops (under random recording
conditions with `conditions: true`).

The input is the shared log-mel of the crop; the target is the crop itself or, with `teacher: hifigan`,
HiFi-GAN's synthesis of that mel (distillation). Losses: log-mel L1 of the output, a multi-resolution STFT
loss, the predicted spectrum against the target's STFT at the model's own framing (power-law compressed
with its phase: without a discriminator this is what teaches the phase), and optionally LSGAN + feature
matching with the shared discriminators. Validation resynthesizes whole utterances and scores them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models import audio
from models.data.augment import WAV_CONDITIONS
from models.data.dataset import Feature
from models.data.manifest import resolve_audio
from models.modules import (
    MultiDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from models.training import WAVEFORM, Scorers, SignalScores, Task, task, unwrap
from models.vocoder import HIFIGAN, get_vocoder
from models.vocos import Vocos, VocosConfig

STFT_SIZES = (512, 1024, 2048)
COMPRESSION = 0.3  # |S|^0.3: loud and quiet bins weigh alike


def stft_loss(wav_hat: torch.Tensor, wav: torch.Tensor, sizes: tuple[int, ...] = STFT_SIZES) -> torch.Tensor:
    """Multi-resolution STFT loss (Yamamoto et al., 2020): spectral convergence + log-magnitude L1 per size."""
    total = wav.new_zeros(())
    for n_fft in sizes:
        window = torch.hann_window(n_fft, device=wav.device)
        spec = [torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True).abs().clamp_min(1e-5)
                for x in (wav_hat, wav)]
        convergence = torch.linalg.norm(spec[1] - spec[0]) / torch.linalg.norm(spec[1]).clamp_min(1e-5)
        total = total + convergence + (spec[0].log() - spec[1].log()).abs().mean()
    return total / len(sizes)


def compressed(spec: torch.Tensor) -> torch.Tensor:
    """A complex spectrum with its magnitude raised to COMPRESSION, phase kept."""
    return torch.polar(spec.abs().clamp_min(1e-7) ** COMPRESSION, spec.angle())


def reconstruction_losses(core: Vocos, mel: torch.Tensor, target: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """The model's output for `mel` (batch, n_mels, frames) against `target` (batch, frames x hop): the
    weighted sum of its three losses (by the config's lambdas), each loss alone, and the output."""
    c = core.config
    spectrum = core.spectrum(mel)
    wav_hat = core.istft(spectrum)
    mel_hat = audio.mel_spectrogram(wav_hat, mel.device, grad=True)[..., : mel.shape[-1]]
    parts = {"mel": (mel_hat - mel).abs().mean(), "stft": stft_loss(wav_hat, target),
             "spectrum": (compressed(spectrum) - compressed(core.istft.analyze(target))).abs().square().mean()}
    total = c.lambda_mel * parts["mel"] + c.lambda_stft * parts["stft"] + c.lambda_spectrum * parts["spectrum"]
    return {"total": total, **parts}, wav_hat


@task("vocos")
class VocosTask(Task):
    def __init__(self, model_config: dict):
        super().__init__(model_config)
        self.config = VocosConfig.from_dict(model_config)
        self._discriminator: MultiDiscriminator | None = None

    def feature(self) -> Feature:
        return WAV_CONDITIONS if self.config.conditions else WAVEFORM

    def build(self) -> Vocos:
        return Vocos(self.config)

    def discriminator(self) -> MultiDiscriminator | None:
        # Kept here too: the generator's adversarial and feature-matching losses run through it.
        self._discriminator = MultiDiscriminator() if self.config.lambda_adv > 0 else None
        return self._discriminator

    def target(self, wav: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """What the output should be for this mel: the recording, or HiFi-GAN's synthesis of the mel."""
        if self.config.teacher is None:
            return wav
        with torch.no_grad():
            return get_vocoder(str(mel.device), name=HIFIGAN).generator(mel).float()

    def losses(self, model: nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict, tuple | None]:
        c, core = self.config, unwrap(model)
        wav, lengths = batch["features"][:, 0], batch["feature_lengths"]
        wav = wav * (torch.arange(wav.shape[-1], device=wav.device)[None] < lengths[:, None].to(wav.device))
        frames = wav.shape[-1] // c.hop_length  # a crop shorter than the rest: silence after it, not the fill
        wav = wav[:, : frames * c.hop_length]
        mel = audio.mel_spectrogram(wav, wav.device)[..., :frames]  # (batch, n_mels, frames)
        target = self.target(wav, mel)
        parts, wav_hat = reconstruction_losses(core, mel, target)
        loss = parts.pop("total")
        logs = {name: value.item() for name, value in parts.items()}
        if self._discriminator is None:
            return loss, logs, None
        real, fake = self._discriminator(target), self._discriminator(wav_hat)
        adv, fm = generator_adversarial_loss(fake), feature_matching_loss(real, fake)
        loss = loss + c.lambda_adv * adv + c.lambda_fm * fm
        logs.update({"adv": adv.item(), "fm": fm.item()})
        return loss, logs, (target, wav_hat.detach())

    def discriminator_loss(self, discriminator: nn.Module, cache: tuple) -> tuple[torch.Tensor, dict]:
        target, wav_hat = cache
        loss = discriminator_loss(discriminator(target), discriminator(wav_hat))
        return loss, {"disc": loss.item()}

    @torch.no_grad()
    def validate(self, model: nn.Module, items: list[dict], out_dir: Path, scorers: Scorers) -> dict:
        """Resynthesize validation utterances from their mel; with signal scorers, PESQ-wb and STOI against
        the recording."""
        core, scores = unwrap(model), SignalScores(out_dir, scorers)
        device = next(core.parameters()).device
        for item in items:
            wav = audio.load_audio(resolve_audio(item["manifest"], item["path"]), audio.SAMPLE_RATE, max_seconds=None)
            mel = audio.mel_spectrogram(torch.from_numpy(wav).to(device), device)
            scores.add(item["id"], wav, core(mel[None])[0].float().cpu().numpy())
        return scores.means()
