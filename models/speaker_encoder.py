"""ECAPA-TDNN speaker encoder (Desplanques et al. 2020), at our scale: the embedding KALL-E's
speaker-voice distribution reads.

    mel (80 x 86 Hz), mean-normalized over time
      -> Conv1d(k=5) -> SE-Res2Blocks (dilations 2, 3, 4)
      -> multi-layer feature aggregation (the blocks' outputs, concatenated) -> Conv1d(k=1)
      -> attentive statistics pooling (channel- and context-dependent attention; weighted mean and std)
      -> BatchNorm -> Linear -> embedding (embedding_dim)

Trained by the recipe (models/training/speaker_encoder.py) with the additive angular margin
softmax (AAM, ArcFace) over the corpus's training speakers, pseudo-speakers included; then frozen.
Kept apart from the evaluation's speaker model (Resemblyzer), so SIM never grades its own input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models import audio, registry
from models.config import ModelConfig
from models.roles import SPEAKER_ENCODER


@dataclass
class SpeakerEncoderConfig(ModelConfig):
    label: ClassVar[str] = "speaker encoder"

    n_mels: int = 80
    channels: int = 256  # the paper's small model uses 512; CPU-sized here
    dilations: tuple[int, ...] = (2, 3, 4)
    scale: int = 4  # Res2Net: the channels split into `scale` groups, each convolved after the previous
    se_channels: int = 64
    attention_channels: int = 64
    embedding_dim: int = 192
    model: str = field(default="speaker_encoder", init=False)


class SqueezeExcitation(nn.Module):
    """Rescale channels by a gate computed from their mean over time (global context)."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Conv1d(channels, bottleneck, 1), nn.ReLU(), nn.Conv1d(bottleneck, channels, 1),
                                  nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean(-1, keepdim=True))


def conv_relu_bn(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2),
                         nn.ReLU(), nn.BatchNorm1d(cout))


class SERes2Block(nn.Module):
    """1x1 conv -> Res2 dilated convs (each group sees the previous group's output: growing receptive
    fields in one block) -> 1x1 conv -> squeeze-excitation, with a residual connection."""

    def __init__(self, channels: int, dilation: int, scale: int, se_channels: int):
        super().__init__()
        width = channels // scale
        self.scale = scale
        self.inp = conv_relu_bn(channels, channels, 1)
        self.res2 = nn.ModuleList([conv_relu_bn(width, width, 3, dilation) for _ in range(scale - 1)])
        self.out = conv_relu_bn(channels, channels, 1)
        self.se = SqueezeExcitation(channels, se_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.inp(x).chunk(self.scale, dim=1)
        outs, previous = [groups[0]], None
        for conv, group in zip(self.res2, groups[1:]):
            previous = conv(group if previous is None else group + previous)
            outs.append(previous)
        return x + self.se(self.out(torch.cat(outs, dim=1)))


class AttentiveStatisticsPooling(nn.Module):
    """Attention over time, per channel, conditioned on the utterance's global mean and std too;
    returns the attention-weighted mean and standard deviation: (batch, 2 x channels)."""

    def __init__(self, channels: int, attention_channels: int):
        super().__init__()
        self.attention = nn.Sequential(conv_relu_bn(3 * channels, attention_channels, 1), nn.Tanh(),
                                       nn.Conv1d(attention_channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True).clamp_min(1e-4)
        context = torch.cat([x, mean.expand(-1, -1, frames), std.expand(-1, -1, frames)], dim=1)
        weights = torch.softmax(self.attention(context), dim=-1)
        mu = (weights * x).sum(-1)
        sigma = ((weights * x.pow(2)).sum(-1) - mu.pow(2)).clamp_min(1e-4).sqrt()
        return torch.cat([mu, sigma], dim=1)


@registry.register("speaker_encoder", role=SPEAKER_ENCODER, config=SpeakerEncoderConfig)
class SpeakerEncoder(nn.Module):
    sample_rate = audio.SAMPLE_RATE

    def __init__(self, config: SpeakerEncoderConfig):
        super().__init__()
        self.config = c = config
        self.embedding_dim = c.embedding_dim
        self.stem = conv_relu_bn(c.n_mels, c.channels, 5)
        self.blocks = nn.ModuleList([SERes2Block(c.channels, d, c.scale, c.se_channels) for d in c.dilations])
        pooled = c.channels * len(c.dilations)
        self.aggregate = conv_relu_bn(pooled, pooled, 1)
        self.pool = AttentiveStatisticsPooling(pooled, c.attention_channels)
        self.pool_norm = nn.BatchNorm1d(2 * pooled)
        self.embed = nn.Linear(2 * pooled, c.embedding_dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (batch, 80, frames) -> embeddings (batch, embedding_dim), not normalized."""
        x = self.stem(mel - mel.mean(-1, keepdim=True))  # mean normalization: the channel's constant EQ goes
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        x = self.aggregate(torch.cat(outs, dim=1))
        return self.embed(self.pool_norm(self.pool(x)))

    @torch.no_grad()
    def embed_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """(80, frames) -> unit-length embedding (embedding_dim,)."""
        return F.normalize(self(mel[None].to(self.embed.weight.device))[0].float(), dim=-1)

    def embed_wav(self, wav: np.ndarray) -> np.ndarray:
        """(samples,) at 22.05 kHz -> unit-length embedding (embedding_dim,)."""
        return self.embed_mel(audio.mel_spectrogram(wav)).cpu().numpy()
