"""SLED: speech language modeling with energy distance (Ma et al. 2025), at our scale.

Speech is a sequence of continuous Flow-VAE latents (21.5 Hz). A causal transformer reads

    [phonemes ..., EOT, z_1, ..., z_T]                       (offline)
    [n phonemes, m latents, n phonemes, m latents, ..., EOT, rest]   (streaming, interleaved)

and its output h_t at the position before each latent conditions a per-step generative head
g(h_t, eps): an MLP of residual blocks whose layer-norm scale, shift and gate are linear in
the noise eps ~ N(0, I) (AdaLN). One MLP pass draws one frame -- no quantizer, no diffusion.
The head is trained with the generalized energy distance (beta = 1) from two samples per step,

    L_ED = E[ ||x - y|| + ||x' - y|| - ||x - x'|| ],   x, x' = g(h_t, eps), g(h_t, eps'),

a strictly proper scoring rule: its expectation is minimal only when g's samples follow the
data's conditional distribution. A linear stop head on h_t (weighted BCE) ends generation.
Classifier-free guidance: text is replaced by a null token with probability `text_dropout`
(EOT kept); at inference h = h_u + lambda (h_c - h_u) feeds the head, stop read from h_c.
Voice prompting: a reference's transcript and latents prefix the sequence; training
concatenates two utterances of one speaker (`prompt_pairs`) so continuation is in-distribution.
`head: l2` is the paper's ablation: the same MLP with eps = 0, trained by mean squared error.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from models import registry
from models.config import LatentLMConfig, LatentStatistics
from models.modules import EOT, TEXT, LatentLanguageModel, layout, positions
from models.roles import TTS, Control, TTSRequest


@dataclass
class SLEDConfig(LatentLMConfig):
    label: ClassVar[str] = "SLED"
    legacy_fitted: ClassVar[tuple[str, ...]] = tuple(f.name for f in fields(LatentStatistics))

    head: str = "energy"  # "energy" (the paper) or "l2" (ablation)
    head_blocks: int = 3
    head_mult: int = 2
    noise_dim: int = 64
    stop_pos_weight: float = 10.0  # one positive per utterance against ~100 negatives
    interleave: tuple[int, int] | None = None  # (n text, m latents) for the streaming variant
    # Generation floor: the stop head is not read before this x the new text's symbols. A short or
    # out-of-domain prompt could make the head fire at once (no audio at all); 0.5 is under half the
    # corpus median rate, so it only holds back a stop that comes far too early.
    min_frames_per_phoneme: float = 0.5
    model: str = field(default="sled", init=False)

    def check(self, source: str) -> None:
        super().check(source)
        if self.head not in ("energy", "l2"):
            raise ValueError(f"{source}: head must be energy or l2, not {self.head!r}")


def energy_distance(x: torch.Tensor, x_prime: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-frame generalized energy distance estimate, d = Euclidean (beta = 1), two samples.

    ||x - y|| + ||x' - y|| - ||x - x'||, the symmetric form of 2||x - y|| - ||x - x'||: the
    first terms pull samples to the data, the last pushes the two samples apart (diversity).
    """
    def norm(a):  # an epsilon keeps the gradient finite when two samples coincide (zero-init head)
        return torch.sqrt(a.float().pow(2).sum(-1) + 1e-8)
    return norm(x - y) + norm(x_prime - y) - norm(x - x_prime)


class NoiseBlock(nn.Module):
    """x + gate(eps) * MLP(LN(x) * (1 + scale(eps)) + shift(eps)): the noise drives AdaLN."""

    def __init__(self, width: int, noise_dim: int, mult: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(noise_dim, 3 * width)
        self.mlp = nn.Sequential(nn.Linear(width, mult * width), nn.SiLU(), nn.Linear(mult * width, width))
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(eps).chunk(3, dim=-1)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class GenerativeHead(nn.Module):
    """g(h, eps): the condition h is the main stream; the noise eps modulates every block."""

    def __init__(self, dim: int, latent_dim: int, noise_dim: int, blocks: int, mult: int):
        super().__init__()
        self.noise_dim = noise_dim
        self.input = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList([NoiseBlock(dim, noise_dim, mult) for _ in range(blocks)])
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.final_modulation = nn.Linear(noise_dim, 2 * dim)
        self.output = nn.Linear(dim, latent_dim)
        for layer in (self.final_modulation, self.output):  # start as the zero map: stable early steps
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        x = self.input(h)
        for block in self.blocks:
            x = block(x, eps)
        shift, scale = self.final_modulation(eps).chunk(2, dim=-1)
        return self.output(self.norm(x) * (1 + scale) + shift)


@registry.register("sled", role=TTS, config=SLEDConfig)
class SLED(LatentLanguageModel):
    # Sampling settings beyond guidance and seed (models.roles.TTSBackend); it streams (LatentLanguageModel)
    CONTROLS = {"stop_threshold": Control("Stop threshold (stop-head probability that ends the utterance)",
                                          0.05, 0.95, 0.5, 0.05),
                **LatentLanguageModel.SHARED_CONTROLS}

    def __init__(self, config: SLEDConfig):
        super().__init__(config, text_rate=config.fitted.text_rate, interleave=config.interleave)
        c = config
        self.head = GenerativeHead(c.dim, c.latent_dim, c.noise_dim, c.head_blocks, c.head_mult)
        self.stop_head = nn.Linear(c.dim, 1)

    def loss(self, texts: list[torch.Tensor], latents: list[torch.Tensor], anchors: list | None = None) -> dict:
        """Energy-distance (or L2) loss on every frame, and the stop loss, for raw (unnormalized) latents
        (anchors: a voice prompt's (symbols, frames) per sequence, or None; `embed`)."""
        latents = [self.normalize(z) for z in latents]
        history = latents
        if self.training and self.config.history_noise:
            history = [z + self.config.history_noise * torch.randn_like(z) for z in latents]
        seq = self.embed(texts, history, anchors=anchors)
        h = self.transformer(seq["x"], seq["positions"])
        h_frames, h_last = self.frame_outputs(h, seq["frame_positions"])  # predict each frame; predict "stop"
        target = torch.cat(latents).to(h.device)
        if self.config.head == "energy":
            eps = torch.randn(2, *h_frames.shape[:-1], self.config.noise_dim, device=h.device)
            samples = self.head(h_frames.unsqueeze(0).expand(2, -1, -1), eps)
            generative = energy_distance(samples[0], samples[1], target).mean()
        else:
            zero = torch.zeros(*h_frames.shape[:-1], self.config.noise_dim, device=h.device)
            generative = (self.head(h_frames, zero).float() - target).pow(2).sum(-1).mean()
        stop_logits = self.stop_head(torch.cat([h_frames, h_last])).squeeze(-1).float()
        stop_target = torch.cat([torch.zeros(len(h_frames)), torch.ones(len(h_last))]).to(h.device)
        stop = F.binary_cross_entropy_with_logits(
            stop_logits, stop_target, pos_weight=torch.tensor(self.config.stop_pos_weight, device=h.device))
        return {"generative": generative, "stop": stop}

    forward = loss  # so DDP can wrap the model

    def text_saliency(self, text: torch.Tensor, latents: torch.Tensor, probes: int = 2, chunk: int = 64,
                      ) -> torch.Tensor:
        """(frames, text tokens): how much the state that predicts each frame depends on each text token.

        The Frobenius norm of d(state)/d(token embedding), estimated with random probes
        (E|v.J|^2 = |J|^2 for v ~ N(0, I)); the final layer norm makes the state's own norm useless.
        With at least as many probes as the state has dimensions, the basis vectors give the exact
        norm in fewer passes. A model that reads its text shows a diagonal; one that ignores it, noise.
        """
        seq = self.embed([text], [self.normalize(latents)])
        x, where = seq["x"].detach(), seq["positions"]
        kinds = torch.tensor(layout(len(text), len(latents), self.interleave), device=x.device)
        text_at = (kinds == TEXT).nonzero()[:, 0]
        before = seq["frame_positions"][0] - 1
        exact = probes >= self.config.dim
        generator = torch.Generator().manual_seed(0)
        rows = []
        with torch.enable_grad():
            for start in range(0, len(before), chunk):
                frames = before[start:start + chunk]
                xb = x.expand(len(frames), -1, -1).clone().requires_grad_(True)
                h = self.transformer(xb, where.expand(len(frames), -1))[torch.arange(len(frames)), frames]
                total = torch.zeros(len(frames), len(text_at))
                for k in range(self.config.dim if exact else probes):
                    if exact:
                        v = torch.zeros_like(h)
                        v[:, k] = 1.0
                    else:
                        v = torch.randn(h.shape, generator=generator).to(h.device)
                    grad, = torch.autograd.grad((h * v).sum(), xb, retain_graph=True)
                    total += grad[:, text_at].float().pow(2).sum(-1).cpu()
                rows.append((total if exact else total / probes).sqrt())
        return torch.cat(rows)

    # ------------------------------------------------------------------ generation

    def sample_frame(self, h: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One draw of the head for condition h (1, dim): a normalized latent (1, latent_dim)."""
        if self.config.head == "l2":
            eps = torch.zeros(1, self.config.noise_dim)
        else:
            eps = torch.randn(1, self.config.noise_dim, generator=generator)
        return self.head(h, eps.to(h.device))

    def frames(self, request: TTSRequest) -> Iterator[torch.Tensor]:
        """The TTS role: the prompt's transcript and the sentence as phonemes, then `generate`."""
        ids, prompt_symbols = self.request_text(request)
        controls = {name: request.controls.get(name, control.default) for name, control in self.CONTROLS.items()}
        return self.generate(ids, request.prompt, request.cfg, request.seed, controls["stop_threshold"],
                             prompt_symbols=prompt_symbols, anchor_prompt=controls["anchor_prompt"] >= 0.5)

    @torch.no_grad()
    def generate(self, text: list[int], prompt: torch.Tensor | None = None, cfg: float | None = 2.0,
                 seed: int | None = 0, stop_threshold: float = 0.5, max_frames: int | None = None,
                 prompt_symbols: int = 0, anchor_prompt: bool = False) -> Iterator[torch.Tensor]:
        """Yield new latent frames (latent_dim,) one at a time, unnormalized, until the stop head fires.

        text: token ids (a prompt's transcript first, when there is a prompt); prompt: the
        reference's latents (frames, latent_dim), forced into the first latent positions;
        prompt_symbols: how many of the text ids are the prompt's transcript (the length cap counts the rest).
        anchor_prompt: align that transcript to the prompt's frames (`positions`' anchor). cfg: guidance
        scale lambda; None runs the conditional model alone. Stop is only read once EOT has been fed (in the
        streaming layout, text may still be arriving).
        """
        device = self.text_embedding.weight.device
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        prompt = self.normalize(prompt.to(device)) if prompt is not None else torch.zeros(0, self.config.latent_dim)
        # Only the new text sets the cap: counting the prompt's transcript let a run that never stops
        # babble for several times the sentence's length.
        new_symbols = len(text) - prompt_symbols
        limit = max_frames or int(20 + self.config.frames_per_phoneme * new_symbols)
        floor = min(limit, max(1, int(self.config.min_frames_per_phoneme * new_symbols)))
        guided = cfg is not None
        ids = torch.tensor(text, device=device)
        streams = [self.text_embedding(ids)]
        if guided:
            streams.append(self.text_embedding(torch.full_like(ids, self.null_id)))
        eot = self.text_embedding.weight[self.eot_id]
        cache = self.transformer.new_cache()
        pending: list[torch.Tensor] = []  # (branches, dim) inputs waiting to be fed
        pending_positions: list[float] = []
        t = forced = generated = 0
        eot_fed = False
        kinds = layout(len(text), len(prompt) + limit, self.interleave)
        anchor = (prompt_symbols, len(prompt)) if anchor_prompt else None
        for kind, position in zip(kinds, positions(kinds, self.text_rate, anchor)):
            pending_positions.append(position)
            if kind == TEXT:
                pending.append(torch.stack([s[t] for s in streams]))
                t += 1
            elif kind == EOT:
                pending.append(eot.expand(len(streams), -1))
                eot_fed = True
            elif forced < len(prompt):
                pending.append(self.latent_in(prompt[forced][None]).expand(len(streams), -1))
                forced += 1
            else:
                # this latent's own position is fed with it, next step
                where = torch.tensor(pending_positions[:-1], device=device)
                h = self.transformer(torch.stack(pending, dim=1), where, cache=cache)[:, -1]
                pending, pending_positions = [], pending_positions[-1:]
                if eot_fed and generated >= floor and torch.sigmoid(self.stop_head(h[:1])).item() > stop_threshold:
                    return
                condition = h[1:] + cfg * (h[:1] - h[1:]) if guided else h[:1]
                z = self.sample_frame(condition, generator)
                yield self.denormalize(z[0])
                pending.append(self.latent_in(z).expand(len(streams), -1))
                generated += 1


def diagonal_alignment(saliency: torch.Tensor, tolerance: float = 0.1) -> float:
    """Share of frames whose most salient text token is on the diagonal (token ~ frame x tokens / frames),
    within max(2, tolerance x tokens) tokens. Reading the text in order gives about 1; ignoring it gives
    about the window's share of the text (0.2 for 130 tokens)."""
    frames, tokens = saliency.shape
    expected = (torch.arange(frames) + 0.5) * tokens / frames
    return float(((saliency.argmax(1) - expected).abs() <= max(2.0, tolerance * tokens)).float().mean())
