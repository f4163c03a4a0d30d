"""KALL-E: autoregressive speech synthesis with next-distribution prediction (Xia et al., AAAI 2026),
at our scale, over the same Flow-VAE latents as SLED.

A causal transformer reads

    [S, phonemes ..., EOT, z_1, ..., z_T]

where S is the speaker latent and z the (normalized) Flow-VAE latents, each through a linear
projection. The output h_t at the position before each latent feeds a linear head that predicts a
diagonal Gaussian p_t = N(mu_t, sigma_t) over the next frame. Where SLED learns each frame's
distribution implicitly (energy distance), KALL-E states it and trains with the closed-form KL to
the codec's posterior q(z_t | x) = N(mu, sigma) (the paper's Eq. 10):

    L = sum_t KL(q_t || p_t) + lambda_end KL(N_end || p_end) + lambda_voice KL(N(mu_S, sigma_S) || N(0, I))

The output at the last latent predicts the end distribution N_end = N(1, e) (mean 1, std e in every
dimension); generation stops when the per-dimension mean KL(p_t || N_end) falls under a threshold
after at least `min_frames` frames, and that frame is dropped (the authors' released inference).

Speaker voice distribution: the frozen speaker encoder's embedding e (models/speaker_encoder.py) ->
linear -> (mu_S, log sigma_S), regularized by KL to N(0, I); training samples S from it, given a
~3 s segment of another utterance by the same speaker. With no reference, S ~ N(0, I) is drawn
from an integer voice seed: the same seed is the same voice on every run and machine.

Sampling: z_t = mu_t + tau sigma_t eps with temperature tau; the sample is fed back and decoded.
Classifier-free guidance (not in the paper): text is replaced by a null token with probability
`text_dropout` (S and EOT kept); at inference h = h_u + lambda (h_c - h_u) feeds the head.
Test-time training (`test_time_train`): fine-tune the language model alone on posterior samples
of one reference clip; the result is a weight delta that `adapted` applies and removes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar, Iterator

import numpy as np
import torch
from torch import nn

from models import registry
from models.config import LatentLMConfig
from models.modules import SPEAKER, LatentLanguageModel, layout, positions
from models.roles import (
    LATENT_CODEC,
    SPEAKER_ENCODER,
    STREAMING,
    TEST_TIME_TRAINING,
    TTS,
    VOICE_SEEDS,
    Control,
    TTSRequest,
)

END_MEAN, END_LOG_STD = 1.0, 1.0  # N_end = N(1, e): log e = 1


@dataclass
class KALLEConfig(LatentLMConfig):
    label: ClassVar[str] = "KALL-E"

    STAGES: ClassVar[dict[str, str]] = {"codec": LATENT_CODEC, "speaker_encoder": SPEAKER_ENCODER}

    speaker_encoder: str = "speaker_encoder"  # the frozen encoder whose embedding gives S
    speaker_dim: int = 192  # its embedding size
    voice_dim: int = 64  # the speaker latent S
    kl_direction: str = "forward"  # KL(q || p) (the paper); "reverse": KL(p || q), the ablation
    lambda_end: float = 0.02
    lambda_voice: float = 0.01
    # Free bits (Kingma et al., 2016): the voice KL of each dimension is penalized only above this
    # many nats (batch mean), so that S need not collapse onto its prior to save a small penalty.
    voice_free_bits: float = 0.0
    min_log_sigma: float = -7.0  # floor on the predicted log std: keeps 1 / sigma^2 finite in bf16
    prompt_pairs: float = 0.3
    aligned_positions: bool = True
    model: str = field(default="kalle", init=False)

    def check(self, source: str) -> None:
        super().check(source)
        if self.kl_direction not in ("forward", "reverse"):
            raise ValueError(f"{source}: kl_direction must be forward or reverse, not {self.kl_direction!r}")
        if self.voice_free_bits < 0:
            raise ValueError(f"{source}: voice_free_bits must be >= 0, not {self.voice_free_bits}")


def gaussian_kl(mu_q: torch.Tensor, log_sigma_q: torch.Tensor, mu_p: torch.Tensor, log_sigma_p: torch.Tensor,
                ) -> torch.Tensor:
    """KL(N(mu_q, sigma_q) || N(mu_p, sigma_p)) per dimension, closed form:
    log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2."""
    mu_q, log_sigma_q, mu_p, log_sigma_p = (t.float() for t in (mu_q, log_sigma_q, mu_p, log_sigma_p))
    return (log_sigma_p - log_sigma_q
            + ((2 * log_sigma_q).exp() + (mu_q - mu_p).pow(2)) / (2 * (2 * log_sigma_p).exp()) - 0.5)


def end_divergence(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Per-dimension mean KL(p || N_end) of predictions (..., dim): small when the model says "end"."""
    return gaussian_kl(mu, log_sigma, torch.full_like(mu, END_MEAN), torch.full_like(mu, END_LOG_STD)).mean(-1)


def voice_from_seed(voice_seed: int, voice_dim: int) -> torch.Tensor:
    """S ~ N(0, I) from an integer seed: numpy's PCG64 stream is fixed by its specification, so a seed
    names the same voice on any machine, independently of torch and of the sampling seed."""
    return torch.from_numpy(np.random.default_rng(int(voice_seed)).standard_normal(voice_dim).astype(np.float32))


@registry.register("kalle", role=TTS, config=KALLEConfig)
class KALLE(LatentLanguageModel):
    CAPABILITIES = frozenset({STREAMING, VOICE_SEEDS, TEST_TIME_TRAINING})
    # Sampling settings beyond guidance and seed (models.roles.TTSBackend)
    CONTROLS = {
        "temperature": Control("Temperature (scales each frame's predicted standard deviation)", 0.0, 1.5, 1.0, 0.05),
        "voice_seed": Control("Voice seed (the voice drawn when there is no reference)", 0, 2**32 - 1, 0, 1),
        "end_threshold": Control("End threshold (per-dimension KL to the end distribution that stops)",
                                 0.05, 2.0, 0.5, 0.05),
        "prompt_speech": Control("Prefix the reference's speech and transcript (1) or use its voice only (0)",
                                 0, 1, 1, 1),
        **LatentLanguageModel.SHARED_CONTROLS,
    }
    min_frames = 3  # the end criterion is not read before this many frames

    def __init__(self, config: KALLEConfig):
        super().__init__(config, text_rate=config.fitted.text_rate if config.aligned_positions else None)
        c = config
        self.voice = nn.Linear(c.speaker_dim, 2 * c.voice_dim)  # speaker embedding -> (mu_S, log sigma_S)
        self.voice_in = nn.Linear(c.voice_dim, c.dim)
        self.head = nn.Linear(c.dim, 2 * c.latent_dim)  # -> (mu_t, log sigma_t)

    # ------------------------------------------------------------------ pieces

    def normalize_posterior(self, mu: torch.Tensor, log_sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A posterior into the model's space; KL is invariant to the shared affine map."""
        return self.normalize(mu), log_sigma - self.latent_std.log()

    def voice_distribution(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Speaker embeddings (..., speaker_dim) -> (mu_S, log sigma_S), each (..., voice_dim)."""
        mu, log_sigma = self.voice(embedding.to(self.voice.weight.device)).chunk(2, dim=-1)
        return mu, log_sigma

    def predict(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_sigma = self.head(h).float().chunk(2, dim=-1)
        return mu, log_sigma.clamp_min(self.config.min_log_sigma)

    # ------------------------------------------------------------------ training

    def loss(self, speaker_embeddings: torch.Tensor, texts: list[torch.Tensor],
             posteriors: list[tuple[torch.Tensor, torch.Tensor]], anchors: list | None = None) -> dict:
        """The KL losses for raw posteriors (mu, log sigma), each (frames, latent_dim), per sequence
        (anchors: a voice prompt's (symbols, frames) per sequence, or None; `embed`).

        The history fed back is a posterior sample (reparameterized), as the sampled frames are at
        inference; with `history_noise`, noisier still.
        """
        c = self.config
        mu_s, log_sigma_s = self.voice_distribution(speaker_embeddings)
        voices = mu_s + log_sigma_s.exp() * torch.randn_like(mu_s) if self.training else mu_s
        voice_kl_dims = gaussian_kl(mu_s, log_sigma_s, torch.zeros_like(mu_s), torch.zeros_like(mu_s)).mean(0)
        voice_kl = voice_kl_dims.sum()
        voice_penalty = voice_kl_dims.clamp_min(c.voice_free_bits).sum()
        normalized = [self.normalize_posterior(mu, log_sigma) for mu, log_sigma in posteriors]
        history = [mu + log_sigma.exp() * torch.randn_like(mu) for mu, log_sigma in normalized]
        if self.training and c.history_noise:
            history = [z + c.history_noise * torch.randn_like(z) for z in history]
        seq = self.embed(texts, history, lead=self.voice_in(voices), anchors=anchors)  # [S, text, EOT, z]
        h = self.transformer(seq["x"], seq["positions"])
        h_frames, h_last = self.frame_outputs(h, seq["frame_positions"])
        mu_p, log_sigma_p = self.predict(h_frames)
        mu_q = torch.cat([mu for mu, _ in normalized]).to(h.device)
        log_sigma_q = torch.cat([s for _, s in normalized]).to(h.device)
        if c.kl_direction == "forward":
            kl = gaussian_kl(mu_q, log_sigma_q, mu_p, log_sigma_p)
        else:
            kl = gaussian_kl(mu_p, log_sigma_p, mu_q, log_sigma_q)
        mu_end, log_sigma_end = self.predict(h_last)
        end = gaussian_kl(torch.full_like(mu_end, END_MEAN), torch.full_like(mu_end, END_LOG_STD),
                          mu_end, log_sigma_end).sum(-1).mean()
        frame_kl = kl.sum(-1).mean()
        return {"kl": frame_kl, "end": end, "voice_kl": voice_kl,
                "total": frame_kl + c.lambda_end * end + c.lambda_voice * voice_penalty}

    forward = loss  # so DDP can wrap the model

    def language_model_parameters(self) -> dict[str, nn.Parameter]:
        """What test-time training adapts: everything but the speaker-voice mapping."""
        return {name: p for name, p in self.named_parameters() if not name.startswith(("voice.", "voice_in."))}

    # ------------------------------------------------------------------ the voice

    def speaker_latent(self, reference: np.ndarray | None, voice_seed: int) -> torch.Tensor:
        """S (voice_dim,): the mean of the voice distribution of a reference clip (22.05 kHz), or, with
        none, the voice seed's draw from N(0, I)."""
        if reference is None:
            return voice_from_seed(voice_seed, self.config.voice_dim).to(self.voice.weight.device)
        embedding = torch.from_numpy(self._speaker_encoder().embed_wav(reference))
        return self.voice_distribution(embedding)[0].detach()

    def _speaker_encoder(self):
        device = str(self.voice.weight.device)
        return registry.resident(("speaker_encoder", self.config.speaker_encoder, device),
                                 lambda: registry.load_model(self.config.speaker_encoder, device)[0])

    # ------------------------------------------------------------------ generation

    def frames(self, request: TTSRequest) -> Iterator[torch.Tensor]:
        """The TTS role: S from the reference (or the voice seed); with `prompt_speech`, the reference's
        transcript and latents prefix the sentence as in SLED."""
        controls = {name: request.controls.get(name, control.default) for name, control in self.CONTROLS.items()}
        voice = self.speaker_latent(request.reference, int(controls["voice_seed"]))
        if controls["prompt_speech"] < 0.5:
            request = replace(request, prompt=None)
        ids, prompt_symbols = self.request_text(request)
        return self.generate(ids, voice, request.prompt, request.cfg, request.seed, controls["temperature"],
                             controls["end_threshold"], prompt_symbols=prompt_symbols,
                             anchor_prompt=controls["anchor_prompt"] >= 0.5)

    @torch.no_grad()
    def generate(self, text: list[int], voice: torch.Tensor, prompt: torch.Tensor | None = None,
                 cfg: float | None = 2.0, seed: int | None = 0, temperature: float = 1.0, end_threshold: float = 0.5,
                 max_frames: int | None = None, prompt_symbols: int = 0, anchor_prompt: bool = False,
                 ) -> Iterator[torch.Tensor]:
        """Yield new latent frames (latent_dim,) one at a time, unnormalized, until the end criterion.

        text: token ids (a prompt's transcript first); voice: S (voice_dim,); prompt: the reference's
        latents (frames, latent_dim), forced after EOT; cfg: guidance scale, None = conditional only;
        anchor_prompt: align the prompt's transcript to its frames (`positions`' anchor).
        """
        device = self.text_embedding.weight.device
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        prompt = self.normalize(prompt.to(device)) if prompt is not None else torch.zeros(0, self.config.latent_dim,
                                                                                          device=device)
        limit = max_frames or int(20 + self.config.frames_per_phoneme * (len(text) - prompt_symbols))
        guided = cfg is not None
        ids = torch.tensor(text, device=device)
        streams = [ids, torch.full_like(ids, self.null_id)] if guided else [ids]
        kinds = [SPEAKER] + layout(len(text), len(prompt) + limit + 1, None)
        anchor = (prompt_symbols, len(prompt)) if anchor_prompt else None
        where = torch.tensor(positions(kinds, self.text_rate, anchor), device=device)
        prefix = 1 + len(text) + 1 + len(prompt)  # S, text, EOT, forced prompt latents
        x = torch.stack([torch.cat([self.voice_in(voice.to(device))[None], self.text_embedding(s),
                                    self.text_embedding.weight[self.eot_id][None],
                                    self.latent_in(prompt) if len(prompt) else prompt.new_zeros(0, self.config.dim)])
                         for s in streams])
        cache = self.transformer.new_cache()
        h = self.transformer(x, where[:prefix], cache=cache)[:, -1]
        for t in range(limit):
            condition = h[1:] + cfg * (h[:1] - h[1:]) if guided else h[:1]
            mu, log_sigma = self.predict(condition)
            if t >= self.min_frames and end_divergence(mu, log_sigma).item() < end_threshold:
                return
            eps = torch.randn(mu.shape, generator=generator).to(device)
            z = mu + temperature * log_sigma.exp() * eps
            yield self.denormalize(z[0])
            step = self.latent_in(z.to(x.dtype)).expand(len(streams), -1)[:, None]
            h = self.transformer(step, where[prefix + t: prefix + t + 1], cache=cache)[:, -1]

    # ------------------------------------------------------------------ test-time training

    def test_time_train(self, posterior: tuple[torch.Tensor, torch.Tensor], text: list[int],
                        speaker_embedding: torch.Tensor, samples: int = 200, lr: float = 3e-5, batch: int = 8,
                        seed: int = 0, progress: Callable[[int, int], None] | None = None,
                        ) -> dict[str, torch.Tensor]:
        """Fit the language model to one voice on `samples` posterior samples of one reference clip
        (mu, log sigma, each (frames, latent_dim), raw) with its transcript, `batch` per step; the end
        term is excluded and the speaker mapping frozen. Returns the weight delta (adapted - original)
        of the language model and leaves the model as it was."""
        steps = math.ceil(samples / batch)
        params = self.language_model_parameters()
        original = {name: p.detach().clone() for name, p in params.items()}
        optimizer = torch.optim.Adam(params.values(), lr=lr)
        was_training = self.training
        torch.manual_seed(seed)  # the posterior samples and dropout: a repeatable fit
        self.train()
        text_ids = torch.tensor(text)
        try:
            for step in range(steps):
                n = min(batch, samples - step * batch)
                out = self.loss(speaker_embedding.expand(n, -1), [text_ids] * n, [posterior] * n)
                optimizer.zero_grad()
                out["kl"].backward()
                optimizer.step()
                if progress is not None:
                    progress(step + 1, steps)
            return {name: (p.detach() - original[name]).clone() for name, p in params.items()}
        finally:
            self._restore(original)
            self.train(was_training)

    def fit_voice(self, reference: np.ndarray, transcript: str, samples: int = 200, lr: float = 3e-5,
                  progress: Callable[[int, int], None] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """The TEST_TIME_TRAINING capability: test-time training on one reference clip (22.05 kHz), its
        codec posterior and transcript; the language model's weight delta for `adapted`."""
        mean, std = self.latent_codec().encode_wav(reference)
        embedding = torch.from_numpy(self._speaker_encoder().embed_wav(reference))
        posterior = (torch.from_numpy(mean).float(), torch.from_numpy(std).float().clamp_min(1e-6).log())
        device = self.voice.weight.device
        return self.test_time_train((posterior[0].to(device), posterior[1].to(device)),
                                    self.frontend.encode([transcript])[0], embedding.to(device), samples=samples,
                                    lr=lr, seed=seed, progress=progress)

    def _restore(self, weights: dict[str, torch.Tensor]) -> None:
        params = self.language_model_parameters()
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)

    @contextlib.contextmanager
    def adapted(self, delta: dict[str, torch.Tensor] | None):
        """Use a test-time-training delta inside the block; the original weights come back exactly after."""
        if not delta:
            yield self
            return
        params = self.language_model_parameters()
        original = {name: params[name].detach().clone() for name in delta}
        with torch.no_grad():
            for name, d in delta.items():
                params[name].add_(d.to(params[name].device))
        try:
            yield self
        finally:
            self._restore(original)
