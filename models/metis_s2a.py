"""Metis's masked acoustic decoder (S2A; Wang et al., NeurIPS 2025, after MaskGCT), at our scale.

Per acoustic frame, the input is the semantic token at that moment (the semantic tokens brought to the codec's
rate) plus the embeddings of the codec layers up to the one being generated, that layer masked where it is to
be predicted; the acoustic prompt's frames carry every layer. A bidirectional masked transformer
(models/masked.py) with one output head per layer; decoding goes one layer at a time from the lowest, each
with its own step count (the authors: many for the first layers, one for the top ones). Guidance drops the
prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from models import registry
from models.config import ModelConfig
from models.masked import MaskedTransformer, decode_layers, guide
from models.roles import ACOUSTIC_DECODER, SEMANTIC_TOKENIZER, TOKEN_CODEC, AcousticPrompt, Control


@dataclass
class MetisS2AFitted:
    """Read off the codec and the semantic tokenizer by the recipe, never chosen."""

    codebooks: int = 8  # the codec's layers it generates (config.codebooks, or all) and its codebook size
    codebook_size: int = 1024
    acoustic_rate: float = 22050 / 256 / 4  # codec token frames per second
    semantic_vocabulary: int = 1024
    semantic_rate: float = 25.0  # semantic tokens per second


@dataclass
class MetisS2AConfig(ModelConfig):
    label: ClassVar[str] = "Metis S2A"
    STAGES: ClassVar[dict[str, str]] = {"codec": TOKEN_CODEC, "semantic_tokenizer": SEMANTIC_TOKENIZER}

    codec: str = "latent_rvq"  # the token codec whose layered tokens it generates
    semantic_tokenizer: str = "semantic_tokenizer"  # whose tokens it reads
    codebooks: int | None = None  # generate the codec's first layers only (None: all); the rest decode as absent
    dim: int = 256
    layers: int = 6
    heads: int = 4
    token_dim: int = 64  # each layer's token embeddings, shared by its input and output (tied, projected to dim)
    ff_mult: int = 4
    prompt_probability: float = 0.85  # training: the acoustic prompt, a prefix of [min(T/4, 5), T/2) frames
    steps: tuple[int, ...] = (16, 8, 4, 2, 1)  # decoding steps per layer from the lowest (the last repeats)
    condition_dropout: float = 0.1  # training: the prompt dropped, for classifier-free guidance
    # training: the layer each item learns is drawn with weights falling linearly with depth (None, the
    # authors'), or as layer_decay ** k from the lowest: more of the budget on the low, predictable layers
    layer_decay: float | None = None
    fitted: MetisS2AFitted = field(default_factory=MetisS2AFitted)


@registry.register("metis_s2a", role=ACOUSTIC_DECODER, config=MetisS2AConfig)
class MetisS2A(nn.Module):
    CONTROLS = {
        "steps": Control("Decoding steps of the first layer (the others as configured, at most this)", 1, 100, 16, 1),
        "temperature": Control("Temperature (Gumbel sampling at temperature x t)", 0.0, 2.0, 1.0, 0.05),
        "cfg": Control("Guidance scale on the acoustic prompt (0: none)", 0.0, 5.0, 0.0, 0.1),
    }

    def __init__(self, config: MetisS2AConfig):
        super().__init__()
        self.config = c = config
        self.codec, self.semantic_tokenizer = c.codec, c.semantic_tokenizer
        f = c.fitted
        self.mask_id = f.codebook_size
        self.semantic_embedding = nn.Embedding(f.semantic_vocabulary, c.dim)
        # Per layer, token embeddings of token_dim (+ the mask token), projected to dim on the way in and tied to
        # the layer's output logits: a 16-layer codec costs 1 M parameters here, not 8 M.
        self.layer_embeddings = nn.ModuleList([nn.Embedding(f.codebook_size + 1, c.token_dim)
                                               for _ in range(f.codebooks)])
        for embedding in self.layer_embeddings:  # unit-norm rows: logits start near uniform, not at +-10
            nn.init.normal_(embedding.weight, std=c.token_dim ** -0.5)
        self.token_in = nn.Linear(c.token_dim, c.dim)
        self.token_out = nn.Linear(c.dim, c.token_dim)
        self.layer_bias = nn.Parameter(torch.zeros(f.codebooks, f.codebook_size))
        self.target_layer = nn.Embedding(f.codebooks, c.dim)  # which layer is being generated
        # The semantic and layer embeddings start at the scale of the projected tokens they are summed with:
        # at N(0, 1) they would drown the codec tokens (norm 16 against about 1) before the first norm.
        for embedding in (self.semantic_embedding, self.target_layer):
            nn.init.normal_(embedding.weight, std=c.dim ** -0.5)
        self.transformer = MaskedTransformer(c.dim, c.layers, c.heads, c.ff_mult)

    def semantic_at_acoustic_rate(self, semantic: torch.Tensor, frames: int) -> torch.Tensor:
        """(semantic_frames,) ids -> (frames,) the id at each acoustic frame's moment (nearest earlier)."""
        times = torch.arange(frames) / self.config.fitted.acoustic_rate
        index = (times * self.config.fitted.semantic_rate).long().clamp(max=len(semantic) - 1)
        return semantic[index]

    def hidden(self, semantic: torch.Tensor, tokens: torch.Tensor, layer: torch.Tensor, t: torch.Tensor,
               prompt_lengths: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """semantic (batch, frames) ids at the acoustic rate, tokens (batch, codebooks, frames) with the mask id
        in each item's `layer` where masked -> (batch, frames, dim). A frame reads the layers up to `layer`;
        the first `prompt_lengths` frames (the acoustic prompt) read every layer."""
        frames = tokens.shape[-1]
        x = self.semantic_embedding(semantic) + self.target_layer(layer)[:, None]
        in_prompt = torch.zeros(len(tokens), frames, dtype=torch.bool, device=x.device)
        if prompt_lengths is not None:
            in_prompt = torch.arange(frames, device=x.device)[None] < prompt_lengths[:, None]
        tokens_in = torch.zeros(*x.shape[:2], self.config.token_dim, device=x.device, dtype=x.dtype)
        for k, embedding in enumerate(self.layer_embeddings):
            read = (k <= layer)[:, None] | in_prompt  # (batch, frames)
            tokens_in = tokens_in + embedding(tokens[:, k]) * read[..., None].to(x.dtype)
        x = x + self.token_in(tokens_in)
        real = None
        if lengths is not None:
            real = torch.arange(frames, device=x.device)[None] < lengths[:, None]
        return self.transformer(x, t, real)

    forward = hidden

    def layer_logits(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden states (..., dim) -> logits (..., codebook_size) of `layer`'s tokens."""
        table = self.layer_embeddings[layer].weight[: self.config.fitted.codebook_size]
        return self.token_out(h) @ table.T + self.layer_bias[layer]

    @torch.no_grad()
    def generate_tokens(self, semantic: np.ndarray, prompt: AcousticPrompt | None, seed: int,
                        controls: dict[str, float]) -> np.ndarray:
        """models.roles.AcousticDecoder: semantic ids (frames,) at the semantic rate -> (codebooks, frames') codec
        tokens of that speech. A prompt's frames go first (every layer given, its own semantic tokens beside
        them) and the speech continues its voice; they are not returned."""
        c = self.config
        device = self.token_out.weight.device
        semantic = torch.as_tensor(np.asarray(semantic), dtype=torch.long)
        frames = max(1, math.ceil(len(semantic) / c.fitted.semantic_rate * c.fitted.acoustic_rate))
        at_rate = self.semantic_at_acoustic_rate(semantic, frames)
        prompt_frames = 0
        if prompt is not None:
            voice = torch.as_tensor(np.asarray(prompt.tokens), dtype=torch.long)[: c.fitted.codebooks]
            prompt_frames = voice.shape[1]
            voice_semantic = torch.as_tensor(np.asarray(prompt.semantic), dtype=torch.long)
            at_rate = torch.cat([self.semantic_at_acoustic_rate(voice_semantic, prompt_frames), at_rate])
        at_rate = at_rate.to(device)[None]
        given = torch.zeros(c.fitted.codebooks, prompt_frames + frames, dtype=torch.long)
        fixed = torch.zeros(c.fitted.codebooks, prompt_frames + frames, dtype=torch.bool)
        if prompt is not None:
            given[:, :prompt_frames], fixed[:, :prompt_frames] = voice, True
        # the control sets the first layer's steps; the configured counts above it, never more than that
        first = int(controls.get("steps", self.CONTROLS["steps"].default))
        above = c.steps[1:] or c.steps
        steps = (first,) + tuple(min(first, s) for s in above)
        cfg = float(controls.get("cfg", self.CONTROLS["cfg"].default))
        prompt_lengths = torch.tensor([prompt_frames], device=device)

        def step_logits(layer: int, tokens: torch.Tensor, masked: torch.Tensor, t: float) -> torch.Tensor:
            index = torch.tensor([layer], device=device)
            time = torch.full((1,), t, device=device)
            h = self.hidden(at_rate, tokens[None].to(device), index, time, prompt_lengths)[0]
            if cfg > 0 and prompt_frames:  # the unconditional branch: the same frames without the prompt
                u = self.hidden(at_rate[:, prompt_frames:], tokens[None, :, prompt_frames:].to(device), index, time)[0]
                h = torch.cat([h[:prompt_frames], guide(h[prompt_frames:], u, cfg)])
            return self.layer_logits(h, layer).cpu()

        generator = torch.Generator().manual_seed(int(seed))
        temperature = float(controls.get("temperature", self.CONTROLS["temperature"].default))
        tokens = decode_layers(step_logits, given, fixed, c.fitted.codebook_size, steps, temperature, 0, generator)
        return tokens[:, prompt_frames:].numpy().astype(np.int64)
