"""SpeakerBeam (Žmolíková et al., IEEE JSTSP 2019; its convolutional form, Delcroix et al., ICASSP 2020),
at our scale: target speaker extraction by a mask on the mixture's spectrogram, conditioned on the
enrollment clip's speaker embedding.

    mixture (samples) -> STFT (n_fft 512, hop 128: 23 ms windows at 22.05 kHz) -> log magnitude (bins, frames)
      -> global layer norm -> 1x1 conv to the bottleneck
      -> temporal conv blocks (Conv-TasNet: 1x1 up, depthwise dilated conv, 1x1 down, residual;
         dilations 1, 2, ..., 2^(blocks - 1)), `repeats` times, with the adaptation (e: the enrollment's
         unit-length embedding by the frozen speaker encoder):
           adaptation "multiply" (the paper's): after the first `adapt_after` repeats, h <- h * (W e + b)
           adaptation "film": before every repeat r, h <- h * (1 + A_r e') + B_r e'  (A_r, B_r start at 0;
                              e' = e x sqrt(speaker_dim), entries of unit variance)
      -> 1x1 conv -> sigmoid: a mask per bin and frame
      -> mask x the mixture's complex STFT -> inverse STFT: the target speaker (samples)

The multiplicative adaptation is the paper's: the voice selects which of the shared features pass, so one
network serves every speaker, heard or not. "film" adapts every repeat, starting from the unconditioned
network (docs/speech_tasks.md compares the two). The mask keeps the mixture's phase. The recipe (SI-SDR on
mixtures made on the fly from the corpus) is models/training/speaker_beam.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from models import registry
from models.config import ModelConfig
from models.roles import SPEAKER_ENCODER, SPEECH_TO_SPEECH, Control, SpeechRequest


@dataclass
class SpeakerBeamConfig(ModelConfig):
    label: ClassVar[str] = "SpeakerBeam"
    STAGES: ClassVar[dict[str, str]] = {"speaker_encoder": SPEAKER_ENCODER}

    tasks: tuple[str, ...] = ("extract",)
    speaker_encoder: str = "speaker_encoder"  # the frozen encoder of the enrollment clip
    speaker_dim: int = 192  # its embedding size
    n_fft: int = 512
    hop_length: int = 128
    bottleneck: int = 128
    hidden: int = 256
    kernel: int = 3
    blocks: int = 6  # per repeat: dilations 1 ... 2^(blocks - 1)
    repeats: int = 3
    adaptation: str = "multiply"  # or "film": scale and shift before every repeat
    adapt_after: int = 1  # "multiply": repeats before the adaptation layer (0: right after the input projection)
    # Training (models/training/speaker_beam.py): interferer level and target-alone items
    sir_range: tuple[float, float] = (-5.0, 5.0)  # target-to-interferer ratio, dB, drawn per item
    solo_probability: float = 0.1  # items with no interferer: the mask must then pass the speech through
    recording_conditions: bool = False  # each voice under a random microphone, band limit, room and noise
    model: str = field(default="speaker_beam", init=False)

    def check(self, source: str) -> None:
        if not 0 <= self.adapt_after < self.repeats:
            raise ValueError(f"{source}: adapt_after must be in [0, repeats), not {self.adapt_after}")
        if self.adaptation not in ("multiply", "film"):
            raise ValueError(f"{source}: adaptation must be multiply or film, not {self.adaptation!r}")
        if self.kernel % 2 == 0:
            raise ValueError(f"{source}: kernel must be odd (a centred convolution keeps the length), "
                             f"not {self.kernel}")
        if set(self.tasks) - {"extract"} or not self.tasks:
            raise ValueError(f"{source}: SpeakerBeam does target speaker extraction only (tasks: [extract])")
        if self.sir_range[0] > self.sir_range[1]:
            raise ValueError(f"{source}: sir_range must be (low, high), not {self.sir_range}")


class TemporalBlock(nn.Module):
    """Conv-TasNet's block: 1x1 conv up, PReLU, global layer norm, depthwise dilated conv, PReLU, norm,
    1x1 conv down; residual."""

    def __init__(self, bottleneck: int, hidden: int, kernel: int, dilation: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(bottleneck, hidden, 1), nn.PReLU(), nn.GroupNorm(1, hidden),
            nn.Conv1d(hidden, hidden, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2, groups=hidden),
            nn.PReLU(), nn.GroupNorm(1, hidden), nn.Conv1d(hidden, bottleneck, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, bottleneck, frames)
        return x + self.net(x)


@registry.register("speaker_beam", role=SPEECH_TO_SPEECH, config=SpeakerBeamConfig)
class SpeakerBeam(nn.Module):
    CONTROLS: ClassVar[dict[str, Control]] = {
        "floor_db": Control("Mask floor in dB (how much of the rest of the mixture is left)", -60, 0, -60, 1),
    }

    def __init__(self, config: SpeakerBeamConfig = SpeakerBeamConfig()):
        super().__init__()
        self.config = c = config
        self.tasks = tuple(c.tasks)
        bins = c.n_fft // 2 + 1
        self.encode = nn.Sequential(nn.GroupNorm(1, bins), nn.Conv1d(bins, c.bottleneck, 1))
        self.repeats = nn.ModuleList(
            nn.Sequential(*(TemporalBlock(c.bottleneck, c.hidden, c.kernel, 2 ** i) for i in range(c.blocks)))
            for _ in range(c.repeats))
        if c.adaptation == "multiply":
            self.adaptation = nn.Linear(c.speaker_dim, c.bottleneck)
        else:  # per repeat, a scale and a shift, both 0 at the start
            self.adaptation = nn.ModuleList(nn.Linear(c.speaker_dim, 2 * c.bottleneck) for _ in range(c.repeats))
            for layer in self.adaptation:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.mask = nn.Conv1d(c.bottleneck, bins, 1)
        self.register_buffer("window", torch.hann_window(c.n_fft), persistent=False)

    def stft(self, wav: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> complex (batch, bins, frames)."""
        return torch.stft(wav, self.config.n_fft, self.config.hop_length, window=self.window, return_complex=True)

    def forward(self, mixture: torch.Tensor, embedding: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
        """mixture (batch, samples), enrollment embedding (batch, speaker_dim) -> the target (batch, samples)."""
        c = self.config
        spectrum = self.stft(mixture)
        h = self.encode(spectrum.abs().clamp_min(1e-5).log())
        for i, repeat in enumerate(self.repeats):
            if c.adaptation == "film":
                voice = embedding * c.speaker_dim ** 0.5  # a unit-length embedding's entries to unit variance
                scale, shift = self.adaptation[i](voice)[..., None].chunk(2, dim=1)
                h = h * (1 + scale) + shift
            elif i == c.adapt_after:
                h = h * self.adaptation(embedding)[..., None]
            h = repeat(h)
        mask = torch.sigmoid(self.mask(h)).clamp_min(floor)
        return torch.istft(spectrum * mask, self.config.n_fft, self.config.hop_length, window=self.window,
                           length=mixture.shape[-1])

    def _speaker_encoder(self):
        device = str(self.mask.weight.device)
        return registry.resident(("speaker_encoder", self.config.speaker_encoder, device),
                                 lambda: registry.load_model(self.config.speaker_encoder, device)[0])

    @torch.no_grad()
    def transform(self, request: SpeechRequest) -> np.ndarray:
        if request.reference is None:
            raise ValueError("speaker extraction needs an enrollment clip of the target voice")
        device = self.mask.weight.device
        embedding = torch.from_numpy(self._speaker_encoder().embed_wav(request.reference)).to(device)
        floor = 10 ** (request.controls.get("floor_db", self.CONTROLS["floor_db"].default) / 20)
        mixture = torch.as_tensor(np.asarray(request.source, np.float32), device=device)
        return self(mixture[None], embedding[None].float(), floor)[0].float().cpu().numpy()
