"""The roles a backend plays, one interface each. A backend registers its role with its builder
(`@registry.register(name, role=..., config=...)`), and the pipelines, the evaluation systems, the
CLI and every studio menu find it by role: adding a backend is its model file, its configs and its
tests, with no edit anywhere else.

Audio is mono float32 at models.audio.SAMPLE_RATE (22.05 kHz) unless a backend says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterator, Protocol, runtime_checkable

import numpy as np
import torch

LATENT_CODEC, TOKEN_CODEC, TTS, SPEECH_TO_SPEECH = "latent_codec", "token_codec", "tts", "speech_to_speech"
SPEAKER_ENCODER, SEMANTIC_TOKENIZER = "speaker_encoder", "semantic_tokenizer"
ROLES = (LATENT_CODEC, TOKEN_CODEC, TTS, SPEECH_TO_SPEECH, SPEAKER_ENCODER, SEMANTIC_TOKENIZER)


@runtime_checkable
class StreamingDecoder(Protocol):
    """Latent frames in (as they are generated), waveform chunks out."""

    def push(self, frames: list[torch.Tensor]) -> np.ndarray: ...

    def flush(self) -> np.ndarray: ...


@runtime_checkable
class LatentCodec(Protocol):
    """Audio <-> continuous latent frames (Flow-VAE)."""

    sample_rate: int
    frame_rate: float  # latent frames per second
    latent_dim: int

    def encode_wav(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(samples,) -> posterior mean (frames, latent_dim) and std (or None for a deterministic codec)."""

    def decode_wav(self, latents: np.ndarray | torch.Tensor, precision: str = "fp32") -> np.ndarray:
        """(frames, latent_dim) -> (samples,)."""

    def streaming_decoder(self, precision: str = "fp32") -> StreamingDecoder: ...


@runtime_checkable
class TokenCodec(Protocol):
    """Audio <-> discrete tokens (ALMTokenizer): `codebooks` parallel streams of ids."""

    sample_rate: int
    frame_rate: float  # token frames per second
    num_codebooks: int
    codebook_size: int

    @property
    def bitrate(self) -> float:
        """Bits per second: frame_rate x num_codebooks x log2(codebook_size)."""

    def encode_wav(self, wav: np.ndarray) -> np.ndarray:
        """(samples,) -> int64 tokens (num_codebooks, frames)."""

    def decode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """(num_codebooks, frames) -> (samples,)."""

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """(num_codebooks, frames) -> (frames, dim): what the tokens stand for, for latent statistics and plots."""


@runtime_checkable
class SpeakerEncoder(Protocol):
    """Audio -> a unit-length voice embedding (what a speaker-conditioned backend reads)."""

    sample_rate: int
    embedding_dim: int

    def embed_wav(self, wav: np.ndarray) -> np.ndarray:
        """(samples,) -> (embedding_dim,), unit length."""


@runtime_checkable
class SemanticTokenizer(Protocol):
    """Audio -> semantic tokens (k-means of self-supervised features): Metis's semantic tokens, and the
    prior of ALMTokenizer's codebooks."""

    sample_rate: int
    frame_rate: float

    def tokens_wav(self, wav: np.ndarray) -> np.ndarray:
        """(samples,) -> (frames,) int64."""


@dataclass
class Scorers:
    """Quality measures the evaluation bench lends to models: a training recipe's validation and the
    test-time-training check use them, handed in by whoever calls (the CLI and the studio pass
    `evaluation.scorers.training_scorers`), so that no model, recipe or pipeline imports the bench. A
    scorer left None leaves its numbers out."""

    # (reference, output, sample rate) -> {"pesq_wb": ..., "stoi": ...}; ValueError when it cannot score
    signal: Callable[[np.ndarray, np.ndarray, int], dict[str, float]] | None = None
    transcribe: Callable[[np.ndarray, int], str] | None = None  # (audio, sample rate) -> text
    word_errors: Callable[[str, str], tuple[int, int]] | None = None  # (reference, hypothesis) -> (errors, words)
    similarity: Callable[[np.ndarray, np.ndarray, int], float] | None = None  # (a, b, rate) -> speaker likeness


@dataclass(frozen=True)
class Control:
    """A sampling setting a TTS backend offers beyond guidance and seed: one slider in the studio,
    one `NAME=SOURCE:<name>=<value>` option of an evaluation system."""

    label: str
    minimum: float
    maximum: float
    default: float
    step: float

    def check(self, name: str, value: float) -> float:
        if self.step == 1 and isinstance(value, float) and not value.is_integer():  # never rounded silently
            raise ValueError(f"{name} must be a whole number, not {value}")
        if not (isinstance(value, (int, float)) and self.minimum <= value <= self.maximum):  # NaN fails too
            raise ValueError(f"{name} must be between {number_text(self.minimum)} and "
                             f"{number_text(self.maximum)}, not {value}")
        return float(value)


def number_text(x: float) -> str:
    """4294967295, not 4.29497e+09; 0.05 as 0.05."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass
class TTSRequest:
    """One sentence to speak. `prompt` is the reference clip's latents in the backend's codec
    (frames, dim), `prompt_text` its transcript and `reference` its audio (samples,) at 22.05 kHz,
    for a backend that reads the voice itself (KALL-E's speaker encoder); `cfg` None means no guidance."""

    text: str
    prompt: torch.Tensor | None = None
    prompt_text: str | None = None
    cfg: float | None = 2.0
    seed: int = 0
    controls: dict[str, float] = field(default_factory=dict)  # values of the backend's CONTROLS
    reference: np.ndarray | None = None


@runtime_checkable
class TTSGenerator(Protocol):
    """Text (and optionally a voice prompt) -> latent frames of its codec, one at a time, so the
    pipeline can decode offline or stream."""

    CONTROLS: ClassVar[dict[str, Control]]
    codec: str  # the latent codec checkpoint whose frames it generates

    def frames(self, request: TTSRequest) -> Iterator[torch.Tensor]:
        """Latent frames (dim,), unnormalized, until the backend decides the sentence is spoken."""


@runtime_checkable
class SpeechToSpeech(Protocol):
    """Speech in, speech out (Metis). A backend implements the tasks it was trained for and lists
    them in TASKS; the pipeline refuses the others with one line."""

    TASKS: ClassVar[tuple[str, ...]]  # among "convert", "enhance", "extract"

    def convert(self, source: np.ndarray, reference: np.ndarray) -> np.ndarray: ...

    def enhance(self, noisy: np.ndarray) -> np.ndarray: ...

    def extract(self, mixture: np.ndarray, enrollment: np.ndarray) -> np.ndarray: ...
