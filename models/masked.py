"""Masked generative modelling: the core every Metis stage shares (MaskGIT, Chang et al. 2022, as MaskGCT and
Metis use it).

Training masks each token of a sequence with probability gamma(t) for a diffusion time t drawn uniformly
(never fewer than MASK_FLOOR of the free tokens), keeps a prompt prefix unmasked with some probability (the
in-context learning of pre-training) and scores the cross-entropy on the masked positions only.

Decoding starts from a fully masked sequence and takes S steps, t = 1, 1 - 1/S, ...: each predicts every
masked token (Gumbel sampling at temperature tau * t among the top k), then masks again the least confident
of the new ones, so that gamma(t_next) of the free tokens stay masked; a decoded token is never masked again,
and the last step is greedy. Classifier-free guidance acts on the hidden state before the output projection:
g = c + w (c - u), rescaled to the conditional's standard deviation and mixed 0.75 / 0.25 with the raw g.
Layered tokens (residual codebooks) are decoded one layer at a time with the layers below given.

Shapes: L positions, V the vocabulary; the mask token is id V.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from models.modules import SelfAttention

MASK_FLOOR = 0.2  # training masks at least this fraction of the free tokens
RESCALE_MIX = 0.75  # CFG: share of the std-rescaled guided hidden state (the authors' code)


def mask_schedule(t: torch.Tensor | float) -> torch.Tensor:
    """gamma(t) = sin(pi t / 2): the fraction of tokens masked at diffusion time t in [0, 1] (1: all)."""
    return torch.sin(torch.as_tensor(t, dtype=torch.float32) * math.pi / 2)


def masked_count(free: int, t: float) -> int:
    """How many of `free` decodable tokens are masked at time t while decoding (at least one until t = 0)."""
    if t <= 0 or free == 0:
        return 0
    return max(1, min(free, math.floor(free * float(mask_schedule(t)))))


def training_mask(lengths: torch.Tensor, length: int, generator: torch.Generator, prompt_probability: float = 0.0,
                  prompt_fraction: tuple[float, float] = (0.0, 0.4), floor: float = MASK_FLOOR,
                  fixed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which tokens a training batch masks: (masked (B, length) bool, prompt (B,) prefix lengths, t (B,)).

    Each item draws t ~ U(0, 1); with `prompt_probability` a prefix of a fraction drawn from
    `prompt_fraction` of its length is the prompt, never masked, and so is every position where `fixed`
    (B, length) is True (a given condition). Of the rest, max(floor, gamma(t)) are masked (at least one).
    """
    batch = len(lengths)
    t = torch.rand(batch, generator=generator)
    masked = torch.zeros(batch, length, dtype=torch.bool)
    prompts = torch.zeros(batch, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        if n >= 2 and float(torch.rand(1, generator=generator)) < prompt_probability:
            low, high = prompt_fraction
            share = low + (high - low) * float(torch.rand(1, generator=generator))
            prompts[i] = min(n - 1, int(share * n))
        free = torch.arange(prompts[i], n)
        if fixed is not None:
            free = free[~fixed[i, free]]
        if len(free) == 0:
            continue
        count = max(1, math.ceil(max(floor, float(mask_schedule(t[i]))) * len(free)))
        chosen = free[torch.randperm(len(free), generator=generator)[:count]]
        masked[i, chosen] = True
    return masked, prompts, t


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the masked positions only: logits (..., V), targets and masked (...)."""
    return F.cross_entropy(logits[masked].float(), targets[masked])


def guide(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on hidden states (..., L, D): c + w (c - u), rescaled to the conditional's
    std per sequence and mixed RESCALE_MIX with the raw guided state. Scale 0 returns the conditional."""
    guided = conditional + scale * (conditional - unconditional)
    if scale == 0:
        return guided
    dims = (-2, -1)
    rescaled = guided * (conditional.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp_min(1e-6))
    return RESCALE_MIX * rescaled + (1 - RESCALE_MIX) * guided


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Logits outside each position's top k set to -inf (top_k 0 or >= V: unchanged)."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    threshold = logits.topk(top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, float("-inf"))


def gumbel(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator).clamp(1e-10, 1 - 1e-10)
    return -torch.log(-torch.log(u))


# logits_fn(tokens (L,) with the mask id where masked, masked (L,) bool, t) -> logits (L, V)
LogitsFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def masked_decode(logits_fn: LogitsFn, given: torch.Tensor, fixed: torch.Tensor, vocabulary: int, steps: int,
                  temperature: float = 1.0, top_k: int = 0, generator: torch.Generator | None = None,
                  on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Iterative confidence decoding of one token sequence: `given` (L,) holds the tokens where `fixed` (L,)
    is True (a prompt, never masked); the others start masked and are decoded in `steps` steps. `on_step`
    sees (step, masked) after each step. Returns the tokens (L,)."""
    if steps < 1:
        raise ValueError(f"masked decoding needs at least one step, not {steps}")
    generator = generator or torch.Generator().manual_seed(0)
    mask_id = vocabulary
    masked = ~fixed.clone()
    tokens = torch.where(masked, torch.full_like(given, mask_id), given)
    free = int(masked.sum())
    for step in range(steps):
        if not masked.any():
            break
        t = 1.0 - step / steps
        logits = top_k_filter(logits_fn(tokens, masked, t).float().to(given.device), top_k)  # a GPU model's too
        last = step == steps - 1
        if last or temperature <= 0:
            sampled = logits.argmax(-1)
        else:
            sampled = (logits / (temperature * t) + gumbel(logits.shape, generator)).argmax(-1)
        sampled = torch.where(masked, sampled, tokens)
        if last:
            tokens, masked = sampled, torch.zeros_like(masked)
        else:
            confidence = logits.softmax(-1).gather(-1, sampled[:, None])[:, 0]
            confidence = confidence + t * gumbel(confidence.shape, generator)
            confidence = confidence.masked_fill(~masked, float("inf"))  # decoded tokens stay
            keep = min(int(masked.sum()), masked_count(free, 1.0 - (step + 1) / steps))
            remask = torch.zeros_like(masked)
            remask[confidence.topk(keep, largest=False).indices] = True
            tokens, masked = torch.where(remask, torch.full_like(sampled, mask_id), sampled), remask
        if on_step is not None:
            on_step(step, masked)
    return tokens


# layer_logits_fn(layer, tokens (layers, L) with the mask id in that layer's masked positions, masked (L,), t)
LayerLogitsFn = Callable[[int, torch.Tensor, torch.Tensor, float], torch.Tensor]


def decode_layers(logits_fn: LayerLogitsFn, given: torch.Tensor, fixed: torch.Tensor, vocabulary: int,
                  steps: tuple[int, ...], temperature: float = 1.0, top_k: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Layered tokens (layers, L), one codebook layer at a time from the lowest, each with the layers below
    as decoded and `steps[layer]` steps (the last entry repeats); positions where `fixed` is True keep
    `given`. A layer with every position fixed is not decoded."""
    tokens = given.clone()
    generator = generator or torch.Generator().manual_seed(0)
    for layer in range(tokens.shape[0]):
        if fixed[layer].all():
            continue

        def layer_logits(row: torch.Tensor, masked: torch.Tensor, t: float, layer: int = layer) -> torch.Tensor:
            current = tokens.clone()
            current[layer] = row
            return logits_fn(layer, current, masked, t)

        tokens[layer] = masked_decode(layer_logits, tokens[layer], fixed[layer], vocabulary,
                                      steps[min(layer, len(steps) - 1)], temperature, top_k, generator)
    return tokens


# ------------------------------------------------------------------ the bidirectional transformer


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the diffusion time t (B,) in [0, 1] -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class AdaptiveRMSNorm(nn.Module):
    """RMSNorm whose scale and shift come from the diffusion-time embedding (zero-initialized: a plain RMSNorm
    at first)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.modulation = nn.Linear(dim, 2 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(time)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        normed = x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)
        return normed * (1 + scale) + shift


class MaskedBlock(nn.Module):
    """Pre-norm bidirectional block, x + attn(norm_t x), then x + MLP(norm_t x)."""

    def __init__(self, dim: int, heads: int, ff_mult: int = 4):
        super().__init__()
        self.attn_norm, self.mlp_norm = AdaptiveRMSNorm(dim), AdaptiveRMSNorm(dim)
        self.attn = SelfAttention(dim, heads, causal=False)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))

    def forward(self, x: torch.Tensor, time: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x, time), positions, mask=mask)
        return x + self.mlp(self.mlp_norm(x, time))


class MaskedTransformer(nn.Module):
    """The bidirectional transformer of masked generative models: embeddings (B, L, D), the diffusion time t
    (B,) through adaptive RMSNorm, a padding mask (B, L) (True where real) -> hidden states (B, L, D)."""

    def __init__(self, dim: int, layers: int, heads: int, ff_mult: int = 4):
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim {dim} must split into {heads} heads of even size")
        self.dim = dim
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList([MaskedBlock(dim, heads, ff_mult) for _ in range(layers)])
        self.norm = AdaptiveRMSNorm(dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        time = self.time(timestep_embedding(t, self.dim))
        positions = torch.arange(x.shape[1], device=x.device)
        for block in self.blocks:
            x = block(x, time, positions, mask)
        return self.norm(x, time)
