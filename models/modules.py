"""Building blocks shared by the models: activations, convolution stacks, masks, discriminators."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """(batch,) lengths -> (batch, max_length) bool, True on real frames."""
    max_length = int(lengths.max()) if max_length is None else max_length
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


class Snake(nn.Module):
    """x + sin^2(a x) / a with a learned per-channel frequency a (Ziyin et al. 2020; BigVGAN).

    Periodic inductive bias for audio; a is stored as log a so it stays positive.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.log_alpha.exp()
        return x + torch.sin(alpha * x).pow(2) / (alpha + 1e-9)


class ResidualUnit(nn.Module):
    """act -> dilated conv -> act -> 1x1 conv, added to the input (same length)."""

    def __init__(self, channels: int, dilation: int, kernel_size: int = 3, snake: bool = False):
        super().__init__()
        act = (lambda: Snake(channels)) if snake else (lambda: nn.LeakyReLU(0.1))
        self.block = nn.Sequential(
            act(), nn.Conv1d(channels, channels, kernel_size, dilation=dilation,
                             padding=dilation * (kernel_size - 1) // 2),
            act(), nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def residual_stack(channels: int, dilations: tuple[int, ...], snake: bool = False) -> nn.Sequential:
    return nn.Sequential(*(ResidualUnit(channels, d, snake=snake) for d in dilations))


# ------------------------------------------------------------------ discriminators (HiFi-GAN, UnivNet)


def _scan(layers: nn.ModuleList, out: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run a discriminator's conv stack: (flattened scores, every layer's activations for feature matching)."""
    features = []
    for layer in layers:
        x = F.leaky_relu(layer(x), 0.1)
        features.append(x)
    x = out(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    """Waveform folded into (frames, period) and scanned with 2-D convs: catches periodic artefacts."""

    def __init__(self, period: int, channels: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        self.period = period
        layers, previous = [], 1
        for c in channels:
            layers.append(nn.Conv2d(previous, c, (5, 1), (3, 1), padding=(2, 0)))
            previous = c
        layers.append(nn.Conv2d(previous, previous, (5, 1), 1, padding=(2, 0)))
        self.layers = nn.ModuleList(layers)
        self.out = nn.Conv2d(previous, 1, (3, 1), 1, padding=(1, 0))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = wav.unsqueeze(1)  # (batch, 1, samples)
        pad = (-x.shape[-1]) % self.period
        x = F.pad(x, (0, pad), mode="reflect" if pad < x.shape[-1] else "constant")
        return _scan(self.layers, self.out, x.view(x.shape[0], 1, -1, self.period))


class ResolutionDiscriminator(nn.Module):
    """2-D convs over one STFT magnitude resolution (multi-resolution discriminator, UnivNet)."""

    def __init__(self, n_fft: int, channels: int = 32):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.layers = nn.ModuleList([
            nn.Conv2d(1, channels, (3, 9), padding=(1, 4)),
            nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4)),
            nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4)),
            nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)),
        ])
        self.out = nn.Conv2d(channels, 1, (3, 3), padding=(1, 1))

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(wav, self.n_fft, self.n_fft // 4, window=self.window, return_complex=True).abs()
        return _scan(self.layers, self.out, spec.unsqueeze(1).transpose(2, 3))  # (batch, 1, frames, bins)


class MultiDiscriminator(nn.Module):
    """Multi-period (periods 2, 3, 5, 7, 11) plus multi-resolution (three STFT sizes) discriminators."""

    def __init__(self, periods: tuple[int, ...] = (2, 3, 5, 7, 11), ffts: tuple[int, ...] = (512, 1024, 2048)):
        super().__init__()
        self.discriminators = nn.ModuleList([PeriodDiscriminator(p) for p in periods]
                                            + [ResolutionDiscriminator(n) for n in ffts])

    def forward(self, wav: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(wav) for d in self.discriminators]


def discriminator_loss(real: list, fake: list) -> torch.Tensor:
    """Least-squares GAN: real scores pushed to 1, generated to 0."""
    return sum(torch.mean((1 - r[0]) ** 2) + torch.mean(f[0] ** 2) for r, f in zip(real, fake))


def generator_adversarial_loss(fake: list) -> torch.Tensor:
    return sum(torch.mean((1 - f[0]) ** 2) for f in fake)


def feature_matching_loss(real: list, fake: list) -> torch.Tensor:
    """L1 between discriminator activations on real and generated audio (real detached)."""
    return sum(torch.mean(torch.abs(r.detach() - f)) for rs, fs in zip(real, fake) for r, f in zip(rs[1], fs[1]))
