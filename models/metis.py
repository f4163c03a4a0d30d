"""Metis (Wang et al., NeurIPS 2025): masked generative pre-training on semantic tokens, fine-tuned per task, and
a masked acoustic decoder, at our scale.

    semantic tokens   the shared semantic tokenizer (Whisper tiny.en encoder features, k-means), 25 Hz
    T2S               a bidirectional transformer over [phonemes; prompt tokens; target tokens] (pre-training:
                      tokens only), the diffusion time through adaptive RMSNorm; masked positions carry a mask
                      token and are predicted (models/masked.py decodes them in S steps)
    S2A               the masked acoustic decoder (models/metis_s2a.py): semantic tokens and an acoustic prompt
                      -> the layered tokens of a token codec, which decodes them (models.roles.TokenCodec)

Classifier-free guidance for T2S drops the phonemes and the prompt (the authors' code); for S2A, the prompt.
The target length is the prompt's tokens per phoneme times the text's phonemes (the authors never released a
duration model), or, without a prompt, the training data's mean tokens per phoneme; or given in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from models import audio, registry
from models.config import ModelConfig
from models.masked import MaskedTransformer, guide, masked_decode
from models.roles import ACOUSTIC_DECODER, SEMANTIC_TOKENIZER, TTS, AcousticPrompt, Control, TTSRequest
from models.text import TextFrontend

TEXT_PART, TOKEN_PART = 0, 1  # what a T2S position holds (a learned embedding each)


@dataclass
class MetisFitted:
    """Read off the semantic tokenizer and measured on the training data by the recipe, never chosen."""

    vocabulary: int = 1024  # the semantic tokenizer's vocabulary size
    token_rate: float = 25.0  # its tokens per second
    tokens_per_symbol: float | None = None  # semantic tokens per phoneme symbol: the length without a prompt


@dataclass
class MetisConfig(ModelConfig):
    label: ClassVar[str] = "Metis T2S"
    STAGES: ClassVar[dict[str, str]] = {"semantic_tokenizer": SEMANTIC_TOKENIZER, "acoustic_decoder": ACOUSTIC_DECODER}

    semantic_tokenizer: str = "semantic_tokenizer"  # whose tokens the model generates
    acoustic_decoder: str = "metis_s2a"  # the S2A checkpoint that speaks them (TTS)
    text: bool = True  # False: the unconditional pre-training model (no phonemes)
    frontend: dict | None = None  # TextFrontend.to_dict(); None = the default frontend
    dim: int = 256
    layers: int = 6
    heads: int = 4
    ff_mult: int = 4
    prompt_probability: float = 0.85  # training: a prefix kept unmasked as the prompt (in-context learning)
    prompt_fraction: tuple[float, float] = (0.0, 0.4)  # its share of the sequence
    condition_dropout: float = 0.15  # training: phonemes and prompt dropped, for classifier-free guidance
    # A LoRA fine-tune (rank > 0): the recipe wraps these projections and merges them at export, so the
    # checkpoint loads as a plain model; 0 = full fine-tuning.
    lora_rank: int = 0
    lora_targets: tuple[str, ...] = ("attn.qkv", "attn.out", "mlp.0", "mlp.2")
    fitted: MetisFitted = field(default_factory=MetisFitted)

    def serves_role(self) -> bool:
        return self.text

    def check(self, source: str) -> None:
        low, high = self.prompt_fraction
        if not 0 <= low <= high < 1:
            raise ValueError(f"{source}: prompt_fraction must be [low, high] with 0 <= low <= high < 1")


@registry.register("metis", role=TTS, config=MetisConfig)
class MetisT2S(nn.Module):
    """Text (phonemes) and a prompt's semantic tokens -> semantic tokens, by masked generative modelling; as a TTS
    backend it hands them to its acoustic decoder and codec."""

    CONTROLS = {
        "t2s_steps": Control("Semantic decoding steps (T2S)", 1, 100, 25, 1),
        "s2a_steps": Control("Acoustic decoding steps of the first layer (S2A; the others fewer)", 1, 100, 16, 1),
        "temperature": Control("Temperature (Gumbel sampling at temperature x t)", 0.0, 2.0, 0.9, 0.05),
        "top_k": Control("Top-k tokens sampled among (0: all)", 0, 1024, 20, 1),
        "duration": Control("Target duration in seconds (0: from the prompt's pace)", 0.0, 30.0, 0.0, 0.1),
    }
    CAPABILITIES = frozenset()

    def __init__(self, config: MetisConfig):
        super().__init__()
        self.config = c = config
        self.frontend = TextFrontend.from_dict(c.frontend) if c.frontend else TextFrontend.default()
        self.mask_id = c.fitted.vocabulary
        self.token_embedding = nn.Embedding(c.fitted.vocabulary + 1, c.dim)  # + the mask token
        self.part_embedding = nn.Embedding(2, c.dim)
        if c.text:
            self.text_embedding = nn.Embedding(len(self.frontend.symbols) + 1, c.dim)  # + the "no text" token
            self.null_id = len(self.frontend.symbols)
        self.transformer = MaskedTransformer(c.dim, c.layers, c.heads, c.ff_mult)
        self.to_logits = nn.Linear(c.dim, c.fitted.vocabulary)

    # ---------------------------------------------------------------- the method

    def hidden(self, texts: list[torch.Tensor | None], tokens: list[torch.Tensor], t: torch.Tensor
               ) -> tuple[torch.Tensor, list[slice]]:
        """Hidden states of [phonemes; tokens] sequences (tokens hold the mask id where masked), padded:
        (batch, length, dim) and where each sequence's tokens sit."""
        device = self.token_embedding.weight.device
        parts = []
        for text, ids in zip(texts, tokens):
            x = self.token_embedding(ids.to(device)) + self.part_embedding.weight[TOKEN_PART]
            if text is not None:
                x = torch.cat([self.text_embedding(text.to(device)) + self.part_embedding.weight[TEXT_PART], x])
            parts.append(x)
        length = max(len(x) for x in parts)
        x = torch.zeros(len(parts), length, self.config.dim, device=device)
        real = torch.zeros(len(parts), length, dtype=torch.bool, device=device)
        spans = []
        for i, (part, ids) in enumerate(zip(parts, tokens)):
            x[i, : len(part)], real[i, : len(part)] = part, True
            spans.append(slice(len(part) - len(ids), len(part)))
        return self.transformer(x, t.to(device), real), spans

    def logits(self, texts: list[torch.Tensor | None], tokens: list[torch.Tensor], t: torch.Tensor
               ) -> list[torch.Tensor]:
        """Per sequence, the logits (frames, vocabulary) at its token positions."""
        h, spans = self.hidden(texts, tokens, t)
        return [self.to_logits(h[i, span]) for i, span in enumerate(spans)]

    forward = logits

    @torch.no_grad()
    def generate(self, text: list[int] | None, prompt: torch.Tensor | None, length: int, cfg: float = 2.5,
                 seed: int = 0, steps: int = 25, temperature: float = 0.9, top_k: int = 20) -> torch.Tensor:
        """Semantic tokens (length,) for the phoneme ids `text` (the prompt's transcript first) continuing
        `prompt` (prompt_frames,) ids (None: no prompt). `cfg` 0 runs the conditional model alone."""
        prompt = torch.zeros(0, dtype=torch.long) if prompt is None else prompt.long().cpu()
        given = torch.cat([prompt, torch.zeros(length, dtype=torch.long)])
        fixed = torch.arange(len(given)) < len(prompt)
        ids = None if text is None or not self.config.text else torch.tensor(text, dtype=torch.long)
        null = None if ids is None else torch.tensor([self.null_id])

        def step_logits(tokens: torch.Tensor, masked: torch.Tensor, t: float) -> torch.Tensor:
            time = torch.full((1,), t)
            if cfg == 0:
                return self.logits([ids], [tokens], time)[0]
            # the unconditional branch: no phonemes, no prompt; it sees the target part only
            h, spans = self.hidden([ids, null], [tokens, tokens[len(prompt):]], time.repeat(2))
            conditional, unconditional = h[0, spans[0]], h[1, spans[1]]
            guided = guide(conditional[len(prompt):], unconditional, cfg)
            return self.to_logits(torch.cat([conditional[: len(prompt)], guided]))

        generator = torch.Generator().manual_seed(int(seed))
        out = masked_decode(step_logits, given, fixed, self.config.fitted.vocabulary, steps, temperature, top_k,
                            generator)
        return out[len(prompt):]

    def target_length(self, text_symbols: int, prompt_frames: int, prompt_symbols: int, duration: float) -> int:
        """Tokens to generate: `duration` seconds when given, else the prompt's tokens per phoneme (or the
        training data's) times the text's phonemes."""
        if duration > 0:
            return max(1, round(duration * self.config.fitted.token_rate))
        if prompt_frames and prompt_symbols:
            rate = prompt_frames / prompt_symbols
        else:
            rate = self.config.fitted.tokens_per_symbol or self.config.fitted.token_rate / 12.0  # ~12 phonemes/s
        return max(1, round(rate * text_symbols))

    # ---------------------------------------------------------------- models.roles.TTSBackend

    def acoustic(self):
        """The resident acoustic decoder this TTS speaks through, on its device."""
        return registry.load_model(self.config.acoustic_decoder, str(self.to_logits.weight.device))[0]

    @property
    def codec(self) -> str | None:
        config = registry.checkpoint_config(self.config.acoustic_decoder)
        return None if config is None else config.get("codec")

    def encode_prompt(self, reference: np.ndarray) -> dict:
        """A reference clip -> its semantic tokens and its codec tokens (the acoustic prompt)."""
        decoder = self.acoustic()
        tokenizer = registry.load_model(self.config.semantic_tokenizer, str(self.to_logits.weight.device))[0]
        codec = registry.load_model(decoder.codec, str(self.to_logits.weight.device))[0]
        return {"semantic": torch.from_numpy(tokenizer.tokens_wav(reference, audio.SAMPLE_RATE)),
                "acoustic": codec.encode_wav(reference)}

    def synthesize(self, request: TTSRequest, precision: str = "fp32") -> np.ndarray:
        if not self.config.text:
            raise ValueError("this Metis checkpoint is the unconditional pre-trained model: it reads no text "
                             "(a fine-tuned TTS checkpoint does)")
        controls = {name: request.controls.get(name, control.default) for name, control in self.CONTROLS.items()}
        prompt = request.prompt
        semantic = None if prompt is None else prompt["semantic"]
        prompt_ids = []
        if semantic is not None:
            prompt_ids = self.frontend.encode([request.prompt_text or ""])[0] + self.frontend.symbols.encode(" ")
        text_ids = self.frontend.encode([request.text])[0]
        length = self.target_length(len(text_ids), 0 if semantic is None else len(semantic), len(prompt_ids),
                                    float(controls["duration"]))
        # The studio's guidance scale is lambda (1: none); the authors' w in c + w (c - u) is lambda - 1.
        scale = 0.0 if request.cfg is None else max(0.0, request.cfg - 1.0)
        tokens = self.generate(prompt_ids + text_ids, semantic, length, scale, request.seed,
                               int(controls["t2s_steps"]), float(controls["temperature"]), int(controls["top_k"]))
        decoder = self.acoustic()
        voice = None if prompt is None else AcousticPrompt(prompt["acoustic"], semantic.numpy())
        acoustic = decoder.generate_tokens(tokens.numpy(), voice, request.seed, {"steps": controls["s2a_steps"]})
        codec = registry.load_model(decoder.codec, str(self.to_logits.weight.device))[0]
        return codec.decode_tokens(acoustic) if acoustic.shape[1] else np.zeros(0, np.float32)
