"""Residual vector quantization over a latent codec's latents: a token codec with the latent codec's fidelity.

    encode   waveform -> the latent codec's posterior mean (frames, latent_dim) at its frame rate ->
             standardized per dimension -> `codebooks` residual VQ layers: layer l takes the nearest of its
             `codebook_size` codewords to what layers 1..l-1 left
    decode   the sum of the chosen codewords -> de-standardized latents -> the latent codec's decoder and
             the shared vocoder

Metis's masked acoustic decoder generates such layered tokens, the lowest layer first. The codebooks start
from residual k-means of the training latents and are refined by gradient on the codebook loss (the
recipe, models/training/latent_rvq.py); the latent codec itself stays frozen and is loaded by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from models import audio, registry
from models.config import ModelConfig
from models.roles import LATENT_CODEC, TOKEN_CODEC


@dataclass
class LatentRVQFitted:
    """Read off the latent codec and its training latents by the recipe, never chosen."""

    latent_dim: int = 64
    frame_rate: float = 22050 / 256 / 4  # latent frames per second
    mean: list[float] | None = None  # per dimension, of the training posterior means: the standardization
    std: list[float] | None = None


@dataclass
class LatentRVQConfig(ModelConfig):
    label: ClassVar[str] = "latent RVQ"
    STAGES: ClassVar[dict[str, str]] = {"latent_codec": LATENT_CODEC, "decoder": LATENT_CODEC}

    latent_codec: str = "flow_vae"  # the latent codec checkpoint whose posterior means are quantized
    # the latent codec checkpoint whose decoder speaks the tokens: one whose decoder was fine-tuned on these
    # codebooks' latents at random depths (quantizer dropout: the flow_vae recipe's `quantizer`), so that the
    # first layers alone decode intelligibly; None: the latent codec's own decoder
    decoder: str | None = None
    codebooks: int = 8
    codebook_size: int = 1024
    fitted: LatentRVQFitted = field(default_factory=LatentRVQFitted)


def nearest(residual: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(n, dim), (size, dim) -> (n,) index of the nearest codeword (squared Euclidean)."""
    distances = residual.pow(2).sum(-1, keepdim=True) - 2 * residual @ codebook.T + codebook.pow(2).sum(-1)[None]
    return distances.argmin(-1)


@registry.register("latent_rvq", role=TOKEN_CODEC, config=LatentRVQConfig)
class LatentRVQ(nn.Module):
    sample_rate = audio.SAMPLE_RATE  # models.roles.TokenCodec
    windows = (1,)  # one latent frame per token frame: the latent codec's rate

    def __init__(self, config: LatentRVQConfig = LatentRVQConfig()):
        super().__init__()
        self.config = c = config
        self.num_codebooks, self.codebook_size = c.codebooks, c.codebook_size
        dim = c.fitted.latent_dim
        self.codewords = nn.Parameter(torch.randn(c.codebooks, c.codebook_size, dim) * 0.1)
        mean, std = c.fitted.mean or [0.0] * dim, c.fitted.std or [1.0] * dim
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)

    # ---------------------------------------------------------------- rates

    def check_window(self, window: int | None) -> int:
        if window not in (None, 1):
            raise ValueError(f"window must be 1 (one token frame per latent frame), not {window}")
        return 1

    def frame_rate_at(self, window: int | None = None) -> float:
        self.check_window(window)
        return self.config.fitted.frame_rate

    def bitrate_at(self, window: int | None = None) -> float:
        return self.frame_rate_at(window) * self.num_codebooks * math.log2(self.codebook_size)

    @property
    def frame_rate(self) -> float:
        return self.config.fitted.frame_rate

    # ---------------------------------------------------------------- the method

    def standardize(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.mean) / self.std

    def quantize(self, x: torch.Tensor, layers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardized latents (n, dim) -> ids (codebooks, n) and the quantized vectors (n, dim), through the
        first `layers` layers (None: all)."""
        residual, ids = x, []
        quantized = torch.zeros_like(x)
        for codebook in self.codewords[: layers or self.num_codebooks]:
            index = nearest(residual, codebook)
            quantized = quantized + codebook[index]
            residual = residual - codebook[index]
            ids.append(index)
        return torch.stack(ids), quantized

    def dequantize(self, tokens: torch.Tensor) -> torch.Tensor:
        """ids (layers, n), layers <= codebooks from the lowest -> standardized latents (n, dim)."""
        return sum(self.codewords[layer][tokens[layer]] for layer in range(tokens.shape[0]))

    def quantize_latents(self, latents: torch.Tensor, layers: torch.Tensor) -> torch.Tensor:
        """Latents (batch, latent_dim, frames) -> the latents each item's first `layers[b]` layers give back
        (batch, latent_dim, frames): what a decoder trained with quantizer dropout learns from."""
        batch, dim, frames = latents.shape
        if layers.shape != (batch,) or not (1 <= layers.min() and layers.max() <= self.num_codebooks):
            raise ValueError(f"layers must be one count in 1..{self.num_codebooks} per item ({batch}), "
                             f"not {layers.tolist()}")
        x = self.standardize(latents.transpose(1, 2).reshape(-1, dim))
        ids, _ = self.quantize(x, int(layers.max()))
        chosen = torch.stack([self.codewords[k][ids[k]] for k in range(len(ids))])  # (layers, n, dim)
        keep = torch.arange(len(ids), device=x.device)[:, None] < layers.repeat_interleave(frames)[None]
        quantized = (chosen * keep[..., None].to(chosen.dtype)).sum(0) * self.std + self.mean
        return quantized.reshape(batch, frames, dim).transpose(1, 2)

    def latent_codec(self):
        """The resident latent codec this codec quantizes, on its device."""
        return registry.load_model(self.config.latent_codec, str(self.mean.device))[0]

    def decoder_codec(self):
        """The resident latent codec whose decoder speaks the tokens (`decoder`, or the quantized one)."""
        return registry.load_model(self.config.decoder or self.config.latent_codec, str(self.mean.device))[0]

    # ---------------------------------------------------------------- models.roles.TokenCodec

    @torch.no_grad()
    def encode_wav(self, wav: np.ndarray, window: int | None = None) -> np.ndarray:
        self.check_window(window)
        mu, _ = self.latent_codec().encode_wav(wav)  # (frames, latent_dim)
        ids, _ = self.quantize(self.standardize(torch.from_numpy(mu).to(self.mean.device)))
        return ids.cpu().numpy().astype(np.int64)

    @torch.no_grad()
    def decode_tokens(self, tokens: np.ndarray, window: int | None = None) -> np.ndarray:
        """(layers, frames) -> (samples,); fewer layers than trained decode the coarser latents they give."""
        self.check_window(window)
        tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=self.mean.device)
        if tokens.ndim != 2 or not 1 <= tokens.shape[0] <= self.num_codebooks:
            raise ValueError(f"tokens must be (1..{self.num_codebooks} layers, frames), not {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise ValueError(f"token ids must lie in 0..{self.codebook_size - 1}")
        latents = self.dequantize(tokens) * self.std + self.mean
        return self.decoder_codec().decode_wav(latents.cpu().numpy())

    @torch.no_grad()
    def embed(self, tokens: np.ndarray) -> np.ndarray:
        tokens = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=self.mean.device)
        return self.dequantize(tokens).cpu().numpy()
