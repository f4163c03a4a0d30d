"""ALMTokenizer (Yang et al., ICML 2025): a low-bitrate, semantic-rich discrete codec, at our scale.

    patchify      log-mel (80 x 86 Hz) -> strided convs -> frames e (T x dim) at 43 Hz
    encoder       a learnable [CLS] query token after every w frames (token interleaving); a bidirectional
                  transformer over the whole sequence; token retrieval keeps the T / w query outputs
    RVQ           a linear map into the semantic space (onto its sphere), then 3 residual VQ layers whose
                  codebooks start from k-means of semantic features at the query rate (the semantic prior)
                  and stay frozen
    decoder       each quantized query followed by w learnable mask tokens; a bidirectional transformer;
                  retrieval of the mask positions -> unpatchify (transposed convs) -> log-mel -> the
                  shared HiFi-GAN

The window w sets the bitrate: frame rate / w x 3 codebooks x log2(codebook size) bits per second; it
is drawn per training step, so one checkpoint serves every window it trained with.

Training (models/training/alm_tokenizer.py) has two stages. Stage 1 trains patchify and unpatchify as
an autoencoder, with an MAE encoder and decoder that predict masked frames (discarded afterwards).
Stage 2 freezes patchify and trains the rest with mel reconstruction, VQ commitment, MAE (20-30 % of
the frames zeroed at the encoder's input, an MAE decoder predicts them) and AR (a light causal
transformer predicts layer 3's quantized vectors from layers 1-2) losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models import audio, registry
from models.config import ModelConfig
from models.modules import Snake, Transformer, residual_stack
from models.roles import TOKEN_CODEC
from models.vocoder import get_vocoder

SILENCE = math.log(audio.MelConfig().clamp)  # log-mel of digital silence: pads inputs to whole query groups


@dataclass
class ALMTokenizerConfig(ModelConfig):
    label: ClassVar[str] = "ALMTokenizer"

    n_mels: int = 80
    dim: int = 256
    strides: tuple[int, ...] = (2,)  # mel frames per patch frame = product (86.1 Hz -> 43.1 Hz)
    dilations: tuple[int, ...] = (1, 3, 9)
    encoder_layers: int = 4
    decoder_layers: int = 4
    heads: int = 4
    windows: tuple[int, ...] = (3, 4, 6)  # patch frames per query token, drawn per training step
    window: int = 4  # the default at inference
    codebooks: int = 3
    codebook_size: int = 1024
    vq_dim: int = 384  # the semantic features' dimension: the codebooks live in their space
    learnable_codebooks: bool = False  # the paper freezes its semantic-prior codebooks
    # The VQ space is the sphere of radius sqrt(vq_dim) (ours; l2-normalized codes as in ViT-VQGAN): the query
    # vectors are standardized (running statistics, as the prior's features were) and projected onto it, so
    # assignment reads direction only. Without it all queries take one frozen codeword (docs/alm_tokenizer.md).
    spherical: bool = True
    semantic_encoder: str | None = "whisper-tiny.en"  # the prior's features; None = no semantic prior
    # Training (models/training/alm_tokenizer.py)
    stage: int = 2  # 1: patchify/unpatchify as an autoencoder with the MAE encoder/decoder; 2: the codec
    mask_rate: tuple[float, float] = (0.2, 0.3)  # MAE: share of patch frames zeroed, drawn per sequence
    mae_layers: int = 2
    ar_layers: int = 2
    lambda_recon: float = 1.0
    lambda_commit: float = 0.25
    lambda_mae: float = 0.5
    lambda_ar: float = 0.5
    # Semantic alignment of the queries (ours, not the paper's): MSE between the query vectors in the VQ
    # space and the standardized semantic features of their spans, so the queries learn the space the frozen
    # codewords come from (docs/alm_tokenizer.md); 0 turns it off.
    lambda_semantic: float = 1.0
    model: str = field(default="alm_tokenizer", init=False)

    @property
    def downsample(self) -> int:
        return int(np.prod(self.strides))

    @property
    def patch_rate(self) -> float:
        return audio.SAMPLE_RATE / audio.MelConfig().hop_length / self.downsample

    def check(self, source: str) -> None:
        if self.window not in self.windows:
            raise ValueError(f"{source}: window {self.window} is not among windows {list(self.windows)}")
        if self.stage not in (1, 2):
            raise ValueError(f"{source}: stage must be 1 or 2, not {self.stage}")
        low, high = self.mask_rate
        if not 0 <= low <= high < 1:
            raise ValueError(f"{source}: mask_rate must be [low, high] within [0, 1), not {list(self.mask_rate)}")


# ------------------------------------------------------------------ token interleaving and retrieval


def to_sphere(x: torch.Tensor) -> torch.Tensor:
    """(..., dim) -> the same directions at radius sqrt(dim): per-dimension RMS 1, like standardized features."""
    return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1])


def interleave(frames: torch.Tensor, token: torch.Tensor, window: int) -> torch.Tensor:
    """(batch, T, dim) frames, T a multiple of w -> (batch, T + T/w, dim): `token` after every w frames."""
    batch, length, dim = frames.shape
    groups = frames.reshape(batch, length // window, window, dim)
    tokens = token.expand(batch, length // window, 1, dim).to(frames.dtype)
    return torch.cat([groups, tokens], dim=2).reshape(batch, -1, dim)


def retrieve_queries(sequence: torch.Tensor, window: int) -> torch.Tensor:
    """The query outputs of an interleaved (batch, N(w + 1), dim) sequence: (batch, N, dim)."""
    return sequence.reshape(sequence.shape[0], -1, window + 1, sequence.shape[-1])[:, :, window]


def retrieve_frames(sequence: torch.Tensor, window: int) -> torch.Tensor:
    """The frame positions of an interleaved sequence, in order: (batch, N w, dim)."""
    batch, _, dim = sequence.shape
    return sequence.reshape(batch, -1, window + 1, dim)[:, :, :window].reshape(batch, -1, dim)


def spread(queries: torch.Tensor, mask_token: torch.Tensor, window: int) -> torch.Tensor:
    """The decoder's input: each (batch, N, dim) query followed by w mask tokens, (batch, N(w + 1), dim)."""
    batch, n, dim = queries.shape
    masks = mask_token.expand(batch, n, window, dim).to(queries.dtype)
    return torch.cat([queries[:, :, None], masks], dim=2).reshape(batch, -1, dim)


def retrieve_masks(sequence: torch.Tensor, window: int) -> torch.Tensor:
    """The mask-token positions of a decoder sequence: (batch, N w, dim)."""
    batch, _, dim = sequence.shape
    return sequence.reshape(batch, -1, window + 1, dim)[:, :, 1:].reshape(batch, -1, dim)


def encoder_positions(n: int, window: int, device=None) -> torch.Tensor:
    """RoPE positions in patch frames: frame t at t, query k at the end of its group, (k + 1) w - 0.5."""
    frames = torch.arange(n * window, device=device, dtype=torch.float32).reshape(n, window)
    return torch.cat([frames, frames[:, -1:] + 0.5], dim=1).reshape(-1)


def decoder_positions(n: int, window: int, device=None) -> torch.Tensor:
    """Query k at the centre of its group, its mask tokens at their frames."""
    frames = torch.arange(n * window, device=device, dtype=torch.float32).reshape(n, window)
    return torch.cat([frames.mean(1, keepdim=True), frames], dim=1).reshape(-1)


# ------------------------------------------------------------------ the blocks


class Patchify(nn.Module):
    """EnCodec-style strided convolutions: (batch, 80, frames) -> (batch, dim, frames / downsample)."""

    def __init__(self, c: ALMTokenizerConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(c.n_mels, c.dim, 7, padding=3)]
        for s in c.strides:
            layers += [residual_stack(c.dim, c.dilations), nn.LeakyReLU(0.1),
                       nn.Conv1d(c.dim, c.dim, 2 * s, stride=s, padding=s // 2)]
        layers += [residual_stack(c.dim, c.dilations), nn.LeakyReLU(0.1), nn.Conv1d(c.dim, c.dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.net(mel)


class UnPatchify(nn.Module):
    """The mirror image: transposed convolutions back to the log-mel."""

    def __init__(self, c: ALMTokenizerConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(c.dim, c.dim, 7, padding=3),
                                   residual_stack(c.dim, c.dilations, snake=True)]
        for s in reversed(c.strides):
            layers += [Snake(c.dim), nn.ConvTranspose1d(c.dim, c.dim, 2 * s, stride=s, padding=s // 2),
                       residual_stack(c.dim, c.dilations, snake=True)]
        layers += [Snake(c.dim), nn.Conv1d(c.dim, c.n_mels, 7, padding=3)]
        self.net = nn.Sequential(*layers)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)


class RunningStandardize(nn.Module):
    """Per-dimension standardization: statistics of the real positions of each training batch, running
    averages of them at inference (BatchNorm without the affine part, with a mask)."""

    def __init__(self, dim: int, momentum: float = 0.01):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        real = x.float()[mask] if mask is not None else x.float().reshape(-1, x.shape[-1])
        if self.training and len(real) > 1:  # fewer than two real positions have no variance to learn from
            mean, var = real.mean(0), real.var(0, unbiased=False)
            with torch.no_grad():
                self.mean.lerp_(mean, self.momentum)
                self.var.lerp_(var, self.momentum)
        else:
            mean, var = self.mean, self.var
        return ((x.float() - mean) * torch.rsqrt(var + 1e-5)).to(x.dtype)


class ResidualVQ(nn.Module):
    """Residual vector quantization: layer l quantizes what layers 1..l-1 left, to its nearest codeword.

    Frozen codebooks are a buffer (the semantic prior never moves); learnable ones a parameter, trained
    by the codebook loss. The straight-through estimator passes the decoder's gradient to the encoder.
    """

    def __init__(self, layers: int, size: int, dim: int, learnable: bool):
        super().__init__()
        codebooks = torch.randn(layers, size, dim)
        if learnable:
            self.codebooks = nn.Parameter(codebooks)
        else:
            self.register_buffer("codebooks", codebooks)

    def indices(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, N, dim) -> (batch, N, layers) codeword ids (distances in float32, also under autocast)."""
        residual, out = x.float(), []
        for codebook in self.codebooks.float():
            ids = torch.cdist(residual, codebook[None].expand(x.shape[0], -1, -1)).argmin(-1)
            out.append(ids)
            residual = residual - codebook[ids]
        return torch.stack(out, dim=-1)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """(batch, N, layers) -> per-layer codewords (batch, N, layers, dim)."""
        return torch.stack([self.codebooks[i][ids[..., i]] for i in range(ids.shape[-1])], dim=2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        """Quantize (batch, N, dim); losses averaged over the positions `mask` marks real."""
        ids = self.indices(x.detach())
        codewords = self.lookup(ids)  # (batch, N, layers, dim)
        weight = torch.ones(x.shape[:2], device=x.device) if mask is None else mask.to(x.dtype)
        denominator = weight.sum().clamp_min(1) * x.shape[-1]
        commit, codebook_loss = x.new_zeros(()), x.new_zeros(())
        residual = x
        for i in range(codewords.shape[2]):
            c = codewords[:, :, i]
            commit = commit + ((residual - c.detach()).pow(2).sum(-1) * weight).sum() / denominator
            if isinstance(self.codebooks, nn.Parameter):
                codebook_loss = codebook_loss + ((residual.detach() - c).pow(2).sum(-1) * weight).sum() / denominator
            residual = residual - c.detach()
        quantized = codewords.sum(2)
        return {"quantized": x + (quantized - x).detach(), "ids": ids,
                "layers": codewords, "commit": commit, "codebook": codebook_loss}


# ------------------------------------------------------------------ the codec


@registry.register("alm_tokenizer", role=TOKEN_CODEC, config=ALMTokenizerConfig)
class ALMTokenizer(nn.Module):
    sample_rate = audio.SAMPLE_RATE  # models.roles.TokenCodec

    def __init__(self, config: ALMTokenizerConfig = ALMTokenizerConfig()):
        super().__init__()
        self.config = c = config
        self.num_codebooks, self.codebook_size, self.windows = c.codebooks, c.codebook_size, tuple(c.windows)
        self.patchify = Patchify(c)
        self.unpatchify = UnPatchify(c)
        self.query_token = nn.Parameter(torch.randn(c.dim) * 0.02)
        self.mask_token = nn.Parameter(torch.randn(c.dim) * 0.02)
        self.encoder = Transformer(c.dim, c.encoder_layers, c.heads, causal=False)
        self.to_vq = nn.Linear(c.dim, c.vq_dim)
        self.standardize = RunningStandardize(c.vq_dim) if c.spherical else None
        self.rvq = ResidualVQ(c.codebooks, c.codebook_size, c.vq_dim, c.learnable_codebooks)
        self.from_vq = nn.Linear(c.vq_dim, c.dim)
        self.decoder = Transformer(c.dim, c.decoder_layers, c.heads, causal=False)

    # ---------------------------------------------------------------- rates

    def check_window(self, window: int | None) -> int:
        window = self.config.window if window is None else window
        if window not in self.windows:
            raise ValueError(f"window must be one of {', '.join(map(str, self.windows))} (trained), not {window}")
        return window

    def frame_rate_at(self, window: int | None = None) -> float:
        """Query tokens per second at window w."""
        return self.config.patch_rate / self.check_window(window)

    def bitrate_at(self, window: int | None = None) -> float:
        return self.frame_rate_at(window) * self.num_codebooks * math.log2(self.codebook_size)

    @property
    def frame_rate(self) -> float:
        return self.frame_rate_at()

    # ---------------------------------------------------------------- shapes

    def pad_mel(self, mel: torch.Tensor, window: int) -> torch.Tensor:
        """Pad frames (with silence) to a whole number of query groups."""
        extra = (-mel.shape[-1]) % (self.config.downsample * window)
        return F.pad(mel, (0, extra), value=SILENCE) if extra else mel

    def frame_mask(self, mel_lengths: torch.Tensor, frames: int) -> torch.Tensor:
        """(batch, patch frames) True where a patch frame covers real mel."""
        lengths = torch.div(mel_lengths + self.config.downsample - 1, self.config.downsample, rounding_mode="floor")
        return torch.arange(frames, device=mel_lengths.device)[None] < lengths[:, None]

    # ---------------------------------------------------------------- the method

    def encode_frames(self, e: torch.Tensor, window: int, mask: torch.Tensor | None = None) -> tuple:
        """Patch frames (batch, T, dim) -> (query outputs (batch, N, dim), frame outputs (batch, T, dim))."""
        batch, length, _ = e.shape
        n = length // window
        keys = None
        if mask is not None:  # a query is real when its group holds a real frame
            groups = mask.reshape(batch, n, window)
            keys = torch.cat([groups, groups.any(-1, keepdim=True)], dim=2).reshape(batch, -1)
        h = self.encoder(interleave(e, self.query_token, window), encoder_positions(n, window, e.device), mask=keys)
        frames = retrieve_frames(h, window)
        # Each query also reads its own group's frames directly: at initialization attention is near uniform,
        # every query output is the same global mean, and against frozen codebooks all queries then take one
        # codeword and stay there (docs/alm_tokenizer.md). The skip makes the queries local from the start.
        local = frames.reshape(batch, n, window, -1).mean(2)
        return retrieve_queries(h, window) + local, frames

    def vq_input(self, queries: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Query outputs (batch, N, dim) -> vectors in the VQ space (batch, N, vq_dim); `mask`: the real queries."""
        z = self.to_vq(queries)
        if self.standardize is None:
            return z
        return to_sphere(self.standardize(z, mask).float()).to(z.dtype)

    def decode_queries(self, quantized: torch.Tensor, window: int, query_mask: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Quantized queries (batch, N, vq_dim) -> log-mel (batch, 80, N w downsample)."""
        batch, n, _ = quantized.shape
        keys = None if query_mask is None else query_mask[..., None].expand(batch, n, window + 1).reshape(batch, -1)
        positions = decoder_positions(n, window, quantized.device)
        h = self.decoder(spread(self.from_vq(quantized), self.mask_token, window), positions, mask=keys)
        return self.unpatchify(retrieve_masks(h, window).transpose(1, 2))

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor, window: int,
                drop: torch.Tensor | None = None) -> dict:
        """Reconstruction at window w, with the patch frames `drop` marks zeroed at the encoder's input (MAE).

        Returns mel_hat (batch, 80, frames), the patch frames e and the encoder's outputs at them
        (batch, T, dim), which frames and queries are real, and the RVQ's outputs (models the losses read).
        """
        mel = self.pad_mel(mel, window)
        e = self.patchify(mel).transpose(1, 2)  # (batch, T, dim)
        valid = self.frame_mask(mel_lengths, e.shape[1])
        encoder_in = e if drop is None else e.masked_fill(drop[..., None], 0.0)
        queries, frame_out = self.encode_frames(encoder_in, window, valid)
        query_valid = valid.reshape(valid.shape[0], -1, window).any(-1)
        z = self.vq_input(queries, query_valid)  # (batch, N, vq_dim)
        vq = self.rvq(z, query_valid)
        return {"mel_hat": self.decode_queries(vq["quantized"], window, query_valid), "frames": e,
                "frame_outputs": frame_out, "valid": valid, "query_valid": query_valid, "z": z, "vq": vq}

    # ---------------------------------------------------------------- waveform API (models.roles.TokenCodec)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def encode_mel(self, mel: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """(80, frames) -> int64 tokens (codebooks, N)."""
        window = self.check_window(window)
        e = self.patchify(self.pad_mel(mel[None].to(self._device()), window)).transpose(1, 2)
        queries, _ = self.encode_frames(e, window)
        return self.rvq.indices(self.vq_input(queries))[0].T

    def encode_wav(self, wav: np.ndarray, window: int | None = None) -> np.ndarray:
        """(samples,) at 22.05 kHz -> int64 tokens (codebooks, N)."""
        return self.encode_mel(audio.mel_spectrogram(wav), window).cpu().numpy()

    def check_tokens(self, tokens: np.ndarray | torch.Tensor) -> torch.Tensor:
        tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=self._device())
        if tokens.dim() != 2 or not 1 <= tokens.shape[0] <= self.num_codebooks or tokens.shape[1] < 1:
            raise ValueError(f"tokens must be (1..{self.num_codebooks} codebooks, frames), not {tuple(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= self.codebook_size:
            raise ValueError(f"token ids must lie in 0..{self.codebook_size - 1}")
        return tokens

    @torch.no_grad()
    def decode_mel(self, tokens: np.ndarray | torch.Tensor, window: int | None = None) -> torch.Tensor:
        """(codebooks, N) -> log-mel (80, N w downsample)."""
        window = self.check_window(window)
        ids = self.check_tokens(tokens).T[None]
        return self.decode_queries(self.rvq.lookup(ids).sum(2), window)[0]

    def decode_tokens(self, tokens: np.ndarray, window: int | None = None) -> np.ndarray:
        """(codebooks, N) -> (samples,) at 22.05 kHz, through the shared vocoder."""
        mel = self.decode_mel(tokens, window)
        return get_vocoder(str(mel.device)).synthesize(mel).cpu().numpy()

    @torch.no_grad()
    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """(codebooks, N) -> (N, vq_dim): the summed codewords, in the semantic space."""
        return self.rvq.lookup(self.check_tokens(tokens).T[None]).sum(2)[0].cpu().numpy()
