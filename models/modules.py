"""Building blocks shared by the models: activations, convolution stacks, masks, discriminators."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models import registry
from models.roles import STREAMING, Control, StreamingDecoder, with_defaults
from models.text import TextFrontend


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


# ------------------------------------------------------------------ causal transformer (SLED, KALL-E)


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (RoPE, Su et al. 2021) on (batch, heads, length, head_dim).

    positions: (length,) shared by the batch, or (batch, length); they may be fractional.

    Rotating query and key pairs by position-dependent angles makes their dot product depend
    only on the relative offset, so a KV cache stays valid as the sequence grows.
    """
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[..., None] * freqs  # (length, half), or (batch, length, half)
    if angles.dim() == 3:  # positions per sequence: broadcast over heads
        angles = angles[:, None]
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head attention, causal (with an optional KV cache) or bidirectional over padded
    sequences (`mask`: (batch, length), True where a position is real). No attention dropout: on CPU
    it forces SDPA's slow math path (a Bernoulli mask over every score), 5x slower at our lengths."""

    def __init__(self, dim: int, heads: int, causal: bool = True):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: dict | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k = rotary(q, positions), rotary(k, positions)
        if not self.causal:
            keys = None if mask is None else mask[:, None, None, :]  # padding is never attended to
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
            return self.out(y.transpose(1, 2).reshape(batch, length, dim))
        past = 0
        if cache is not None:
            if "k" in cache:
                past = cache["k"].shape[2]
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # new positions see the whole cache and each other causally
            mask = torch.arange(length, device=x.device)[:, None] + past >= torch.arange(past + length,
                                                                                         device=x.device)[None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(batch, length, dim))


class TransformerBlock(nn.Module):
    """Pre-norm: x + attn(LN x), then x + MLP(LN x)."""

    def __init__(self, dim: int, heads: int, ff_mult: int = 4, dropout: float = 0.0, causal: bool = True):
        super().__init__()
        self.attn_norm, self.mlp_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, causal)
        self.attn_dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: dict | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn_dropout(self.attn(self.attn_norm(x), positions, cache, mask))
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """A transformer over embeddings with RoPE: causal (decoder-only, with an optional KV cache) or
    bidirectional (an encoder, with a padding mask).

    Causal, `forward(x, positions, cache)` with `cache = model.new_cache()` appends this call's keys
    and values, so feeding a sequence in pieces gives the same outputs as feeding it whole.
    """

    def __init__(self, dim: int, layers: int, heads: int, ff_mult: int = 4, dropout: float = 0.0,
                 causal: bool = True):
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim {dim} must split into {heads} heads of even size")
        self.blocks = nn.ModuleList([TransformerBlock(dim, heads, ff_mult, dropout, causal) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)

    def new_cache(self) -> list[dict]:
        return [{} for _ in self.blocks]

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None,
                cache: list[dict] | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        if positions is None:
            past = cache[0]["k"].shape[2] if cache and "k" in cache[0] else 0
            positions = torch.arange(past, past + x.shape[1], device=x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, None if cache is None else cache[i], mask)
        return self.norm(x)


# ------------------------------------------------------------------ sequence layouts (SLED, KALL-E)

TEXT, EOT, LATENT, SPEAKER = 0, 1, 2, 3  # what each sequence position holds


def layout(n_text: int, n_frames: int, interleave: tuple[int, int] | None) -> list[int]:
    """The kinds (TEXT, EOT, LATENT) of one sequence's positions, in order.

    Offline: all text, EOT, all latents. Streaming: n text tokens then m latents, repeated
    while text remains; then EOT and the remaining latents. Text leads the speech, so each
    latent sees the phonemes it speaks. n_frames may be huge at inference (the cap).
    """
    if interleave is None:
        return [TEXT] * n_text + [EOT] + [LATENT] * n_frames
    n, m = interleave
    kinds, t, f = [], 0, 0
    while t < n_text:
        take = min(n, n_text - t)
        kinds += [TEXT] * take
        t += take
        if t < n_text:
            step = min(m, n_frames - f)
            kinds += [LATENT] * step
            f += step
    return kinds + [EOT] + [LATENT] * (n_frames - f)


def positions(kinds: list[int], text_rate: float | None, anchor: tuple[int, int] | None = None) -> list[float]:
    """RoPE positions of a layout: sequence order, or aligned (text i at i x text_rate, frame k at k).

    anchor = (prompt symbols, prompt frames): a voice prompt's transcript is aligned at the prompt's own
    rate and the new text starts where the prompt's speech ends. One global rate puts the boundary inside
    the prompt's last words for a speaker faster than average, and the model speaks them again.
    """
    if text_rate is None:
        return list(range(len(kinds)))
    symbols, frames = anchor or (0, 0)

    def text_position(t: int) -> float:
        return t * frames / symbols if t < symbols else frames + (t - symbols) * text_rate

    out, t, f = [], 0, 0
    for kind in kinds:
        if kind == LATENT:
            out.append(float(f))
            f += 1
        elif kind == SPEAKER:  # a leading speaker latent sits one symbol before the text
            out.append(-text_rate)
        else:  # EOT sits where the text ends
            out.append(text_position(t))
            t += kind == TEXT
    return out


class LatentLanguageModel(nn.Module):
    """What the continuous-latent TTS models (SLED, KALL-E) share: phoneme and latent embeddings into one
    causal transformer, the "no text" token of classifier-free guidance, and the codec latents'
    normalization. A subclass adds its own heads; `embed` lays sequences out for it. As a TTS backend it
    streams: a subclass's `frames(request)` are latent frames of its `codec`, which the codec decodes
    (the prompt is the reference's posterior mean in that codec).

    config needs codec, latent_dim, frontend, dim, layers, heads, ff_mult, dropout and fitted
    (models.config.LatentStatistics); text_rate aligns RoPE positions (None: sequence order).
    """

    # A setting both models share (each adds it to its CONTROLS): where a voice prompt's transcript sits
    SHARED_CONTROLS = {
        "anchor_prompt": Control("Anchored prompt (1: the reference's transcript on its own speech, the sentence "
                                 "from where it ends; 0: all text at the model's mean rate)", 0, 1, 0, 1),
    }

    @classmethod
    def control_defaults(cls, config: dict) -> dict[str, float]:
        """The defaults a checkpoint's config sets: a model trained on anchored pairs speaks after a prompt
        anchored, as it learned to."""
        return {"anchor_prompt": 1.0} if config.get("anchored_pairs") else {}

    def __init__(self, config, text_rate: float | None, interleave: tuple[int, int] | None = None):
        super().__init__()
        self.config = c = config
        self.CONTROLS = with_defaults(type(self).CONTROLS, self.control_defaults(c.to_dict()))
        self.codec = c.codec
        self.frontend = TextFrontend.from_dict(c.frontend) if c.frontend else TextFrontend.default()
        self.eot_id = self.frontend.symbols.eos_id
        self.null_id = len(self.frontend.symbols)
        self.text_embedding = nn.Embedding(len(self.frontend.symbols) + 1, c.dim)
        self.latent_in = nn.Sequential(nn.Linear(c.latent_dim, c.dim), nn.LayerNorm(c.dim))
        self.transformer = Transformer(c.dim, c.layers, c.heads, c.ff_mult, c.dropout)
        self.text_rate = text_rate
        self.interleave = interleave
        mean = torch.tensor(c.fitted.latent_mean) if c.fitted.latent_mean else torch.zeros(c.latent_dim)
        std = torch.tensor(c.fitted.latent_std) if c.fitted.latent_std else torch.ones(c.latent_dim)
        self.register_buffer("latent_mean", mean.float(), persistent=False)
        self.register_buffer("latent_std", std.float(), persistent=False)

    CAPABILITIES = frozenset({STREAMING})

    def latent_codec(self):
        """The resident latent codec whose frames this model speaks, on the model's device."""
        return registry.load_model(self.codec, str(self.latent_mean.device))[0]

    def encode_prompt(self, reference: np.ndarray) -> torch.Tensor:
        """A reference clip -> its posterior mean in the codec (frames, latent_dim), unnormalized."""
        return torch.from_numpy(self.latent_codec().encode_wav(reference)[0])

    def synthesize(self, request, precision: str = "fp32") -> np.ndarray:
        return self.decode(list(self.frames(request)), precision)

    def decode(self, frames: list[torch.Tensor], precision: str = "fp32") -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        return self.latent_codec().decode_wav(torch.stack(frames), precision=precision)

    def streaming_decoder(self, precision: str = "fp32") -> StreamingDecoder:
        return self.latent_codec().streaming_decoder(precision)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean) / self.latent_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std + self.latent_mean

    def request_text(self, request) -> tuple[list[int], int]:
        """A TTS request's token ids (the prompt's transcript first when a prompt is used) and how many
        of them are the prompt's."""
        prompt_ids = []
        if request.prompt is not None:
            prompt_ids = self.frontend.encode([request.prompt_text or ""])[0] + self.frontend.symbols.encode(" ")
        return prompt_ids + self.frontend.encode([request.text])[0], len(prompt_ids)

    def embed(self, texts: list[torch.Tensor], latents: list[torch.Tensor], lead: torch.Tensor | None = None,
              anchors: list[tuple[int, int] | None] | None = None) -> dict:
        """Padded input embeddings of sequences laid out by `layout`, and where each latent sits.

        texts: token ids per sequence; latents: normalized (frames, latent_dim) per sequence;
        lead: (batch, dim) embeddings of a SPEAKER position before each sequence, or None;
        anchors: per sequence, a voice prompt's (symbols, frames) for `positions`, or None.
        """
        device = self.text_embedding.weight.device
        first = [SPEAKER] if lead is not None else []
        kinds = [first + layout(len(t), len(z), self.interleave) for t, z in zip(texts, latents)]
        length = max(len(k) for k in kinds)
        x = torch.zeros(len(texts), length, self.config.dim, device=device)
        rope = torch.zeros(len(texts), length, device=device)
        frame_positions = []
        anchors = anchors or [None] * len(texts)
        for i, (kind, text, z) in enumerate(zip(kinds, texts, latents)):
            rope[i, : len(kind)] = torch.tensor(positions(kind, self.text_rate, anchors[i]), device=device)
            kind = torch.tensor(kind + [-1] * (length - len(kind)), device=device)  # -1: padding after the end
            if lead is not None:
                x[i, 0] = lead[i].to(device)
            x[i, kind == TEXT] = self.text_embedding(text.to(device))
            x[i, kind == EOT] = self.text_embedding.weight[self.eot_id]
            if len(z):
                x[i, kind == LATENT] = self.latent_in(z.to(device)).to(x.dtype)
            frame_positions.append((kind == LATENT).nonzero()[:, 0])
        return {"x": x, "positions": rope, "frame_positions": frame_positions}

    def frame_outputs(self, h: torch.Tensor, frame_positions: list[torch.Tensor]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """From transformer outputs h (batch, length, dim): the outputs before each latent, which predict
        it (all frames, dim), and the output at each sequence's last latent, which predicts the end (batch, dim)."""
        rows = torch.cat([torch.full((len(p),), i) for i, p in enumerate(frame_positions)]).to(h.device)
        before = torch.cat([p - 1 for p in frame_positions])
        last = torch.stack([p[-1] for p in frame_positions])
        return h[rows, before], h[torch.arange(len(last)), last]


# ------------------------------------------------------------------ low-rank adaptation (Metis fine-tunes)


class LoRALinear(nn.Linear):
    """A linear layer with a low-rank update (LoRA, Hu et al. 2021): y = W x + b + (alpha / r) B A x. It keeps the
    base layer's parameter names (`weight`, `bias`), so a base checkpoint loads into it; B starts at zero, so a
    fine-tune starts from the base model, and the recipe trains only A and B (`train.trainable`)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None):
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, not {rank}")
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(base.weight)
            if base.bias is not None:
                self.bias.copy_(base.bias)
        self.scale = (alpha or rank) / rank
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features, device=base.weight.device) / rank ** 0.5)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale

    def merged(self) -> nn.Linear:
        """The plain linear layer with the update folded into its weight."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=self.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.scale * self.lora_b @ self.lora_a)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


def add_lora(model: nn.Module, rank: int, targets: tuple[str, ...], alpha: float | None = None) -> list[str]:
    """Wrap every nn.Linear whose name ends with one of `targets` (e.g. "attn.qkv", "mlp.0") in a LoRALinear;
    returns the wrapped names (none matching is an error)."""
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if type(child) is nn.Linear and full.endswith(tuple(targets)):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(full)
    if not wrapped:
        raise ValueError(f"LoRA targets {list(targets)} match no linear layer")
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRALinear back into a plain linear layer: the model's parameter names are the base's
    again, so the export loads strictly into the model without LoRA."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
    return model
