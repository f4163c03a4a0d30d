"""Vocos (Siuzdak, ICLR 2024): a mel vocoder that never upsamples.

    mel (batch, 80, frames) -> Conv1d embedding -> ConvNeXt blocks, all at the mel's frame rate
        -> per frame a complex spectrum: magnitude exp(m), phase p as (cos p, sin p)
        -> inverse STFT (hop 256, window 1024): frames x 256 samples

HiFi-GAN reaches the sample rate through transposed convolutions and runs its residual blocks at every
upsampled rate; here every layer runs at 86 frames per second and the inverse FFT does the upsampling, so
the arithmetic per second of audio is a small fraction of HiFi-GAN's. The inverse STFT undoes exactly
the framing of the shared mel (models.audio: reflect padding of (n_fft - hop) / 2, Hann window), so
output sample n lines up with the mel frame that analysed it. The recipe is models/training/vocos.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from models import registry
from models.audio import MelConfig
from models.config import ModelConfig
from models.roles import VOCODER


@dataclass
class VocosConfig(ModelConfig):
    label: ClassVar[str] = "Vocos"

    dim: int = 384
    intermediate: int = 1152
    layers: int = 8
    kernel: int = 7
    n_mels: int = MelConfig.n_mels
    n_fft: int = MelConfig.n_fft  # the mel's window and hop: the iSTFT inverts its framing
    hop_length: int = MelConfig.hop_length
    # Training (models/training/vocos.py). The target waveform: the recording, or "hifigan", HiFi-GAN's
    # output for the same mel (distillation: a deterministic target, so the phase can be learnt by regression)
    teacher: str | None = None
    # Recording conditions (models/data/augment.py: microphone colouration, band limits, a small room, low noise)
    # on the training audio: input mel and target alike, so that a vocoder trained on clean synthetic voices
    # also hears what real recordings carry
    conditions: bool = False
    lambda_mel: float = 45.0  # log-mel L1 of the output against the target's
    lambda_stft: float = 1.0  # multi-resolution STFT: spectral convergence + log-magnitude L1 (512, 1024, 2048)
    lambda_spectrum: float = 1.0  # the predicted spectrum against the target's, power-law compressed, with phase
    lambda_adv: float = 0.0  # LSGAN with the shared multi-period + multi-resolution discriminators (0: none)
    lambda_fm: float = 0.0

    def check(self, source: str) -> None:
        mel = MelConfig()
        if (self.n_mels, self.n_fft, self.hop_length) != (mel.n_mels, mel.n_fft, mel.hop_length):
            raise ValueError(f"{source}: n_mels, n_fft and hop_length must be the shared mel's "
                             f"({mel.n_mels}, {mel.n_fft}, {mel.hop_length}): the vocoder reads that mel")
        if self.kernel % 2 == 0:
            raise ValueError(f"{source}: kernel must be odd (a centred convolution keeps the length), "
                             f"not {self.kernel}")
        if self.teacher not in (None, "hifigan"):
            raise ValueError(f"{source}: teacher must be hifigan or none (the recording), not {self.teacher!r}")


class ConvNeXtBlock(nn.Module):
    """Depthwise conv over time, LayerNorm, pointwise MLP (GELU), layer scale, residual."""

    def __init__(self, dim: int, intermediate: int, kernel: int, scale: float):
        super().__init__()
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.up, self.down = nn.Linear(dim, intermediate), nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.full((dim,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, dim, frames)
        h = self.norm(self.depthwise(x).transpose(1, 2))
        return x + (self.gamma * self.down(F.gelu(self.up(h)))).transpose(1, 2)


class InverseSTFT(nn.Module):
    """Complex spectra (batch, n_fft // 2 + 1, frames) -> (batch, frames x hop): windowed inverse FFT per
    frame, overlap-add, divided by the window's squared envelope, (n_fft - hop) / 2 cut from each side
    (the padding models.audio adds before framing)."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        frames, window = spec.shape[-1], self.window.float()  # float32 even in a bf16 module
        pieces = torch.fft.irfft(spec, n=self.n_fft, dim=1) * window[None, :, None]  # (batch, n_fft, frames)
        length = (frames - 1) * self.hop + self.n_fft
        fold = dict(output_size=(1, length), kernel_size=(1, self.n_fft), stride=(1, self.hop))
        wav = F.fold(pieces, **fold)[:, 0, 0]
        envelope = F.fold(window.square()[None, :, None].expand(1, -1, frames), **fold)[0, 0, 0]
        cut = (self.n_fft - self.hop) // 2
        return wav[:, cut: length - cut] / envelope[cut: length - cut].clamp_min(1e-8)

    def analyze(self, wav: torch.Tensor) -> torch.Tensor:
        """(batch, frames x hop) -> (batch, n_fft // 2 + 1, frames): the STFT this inverts (a loss's target)."""
        cut = (self.n_fft - self.hop) // 2
        padded = F.pad(wav.unsqueeze(1), (cut, cut), mode="reflect").squeeze(1)
        return torch.stft(padded, self.n_fft, self.hop, window=self.window.float(), center=False, return_complex=True)


@registry.register("vocos", role=VOCODER, config=VocosConfig)
class Vocos(nn.Module):
    """Log-mel (batch, n_mels, frames) -> waveform (batch, frames x hop_length)."""

    def __init__(self, config: VocosConfig = VocosConfig()):
        super().__init__()
        self.config = c = config
        self.n_mels, self.hop_length = c.n_mels, c.hop_length
        self.embed = nn.Conv1d(c.n_mels, c.dim, c.kernel, padding=c.kernel // 2)
        self.norm_in, self.norm_out = nn.LayerNorm(c.dim), nn.LayerNorm(c.dim)
        self.blocks = nn.ModuleList(ConvNeXtBlock(c.dim, c.intermediate, c.kernel, 1 / c.layers)
                                    for _ in range(c.layers))
        self.head = nn.Linear(c.dim, c.n_fft + 2)  # log-magnitude and phase per frequency bin
        self.istft = InverseSTFT(c.n_fft, c.hop_length)

    @property
    def receptive_frames(self) -> int:
        """Mel frames on each side that reach one output frame: the convolutions, then the window's overlap."""
        c = self.config
        return (c.layers + 1) * (c.kernel // 2) + c.n_fft // c.hop_length // 2

    def spectrum(self, mel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) -> complex (batch, n_fft // 2 + 1, frames)."""
        x = self.norm_in(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        # the head in float32 whatever the rest runs in: bf16 would quantize a phase of 30 rad to 0.1 rad
        h = self.norm_out(x.transpose(1, 2)).float()
        out = F.linear(h, self.head.weight.float(), self.head.bias.float())
        log_magnitude, phase = out.transpose(1, 2).chunk(2, dim=1)
        magnitude = log_magnitude.clamp(max=6.0).exp()  # exp(6) ~ 400: far above speech, keeps early steps finite
        return torch.polar(magnitude, phase)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.istft(self.spectrum(mel))  # float32
