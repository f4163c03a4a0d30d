"""The roles a backend plays, one interface each. A backend registers its role with its builder
(`@registry.register(name, role=..., config=...)`), and the pipelines, the evaluation systems, the
CLI and every studio menu find it by role: adding a backend is its model file, its configs and its
tests, with no edit anywhere else.

Each Protocol below lists every member a caller uses, and nothing else. What a backend can do beyond
its role (stream, draw voices from seeds, fit a voice at test time) it declares in CAPABILITIES, checked
when it registers (`check_declared`); nothing is found by `hasattr` or by a control's name.

Audio is mono float32 at models.audio.SAMPLE_RATE (22.05 kHz) unless a backend says otherwise.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Iterator, Protocol, runtime_checkable

import numpy as np
import torch

LATENT_CODEC, TOKEN_CODEC, TTS, SPEECH_TO_SPEECH = "latent_codec", "token_codec", "tts", "speech_to_speech"
SPEAKER_ENCODER, SEMANTIC_TOKENIZER, ACOUSTIC_DECODER = "speaker_encoder", "semantic_tokenizer", "acoustic_decoder"
VOCODER = "vocoder"
ROLES = (LATENT_CODEC, TOKEN_CODEC, TTS, SPEECH_TO_SPEECH, SPEAKER_ENCODER, SEMANTIC_TOKENIZER, ACOUSTIC_DECODER,
         VOCODER)

# What a TTS backend may declare in CAPABILITIES.
STREAMING = "streaming"                    # StreamingTTS: frames as they are generated, a streaming decoder
VOICE_SEEDS = "voice_seeds"                # a `voice_seed` control: a voice drawn from a number
TEST_TIME_TRAINING = "test_time_training"  # AdaptableTTS: fitted to one reference clip, then adapted
CAPABILITIES = (STREAMING, VOICE_SEEDS, TEST_TIME_TRAINING)

SPEECH_TASKS = ("convert", "enhance", "extract")  # voice conversion, speech enhancement, target speaker extraction


@runtime_checkable
class StreamingDecoder(Protocol):
    """Latent frames in (as they are generated), waveform chunks out."""

    lag: int  # frames pushed before any audio can come out (its decoders' lookahead)

    def push(self, frames: list[torch.Tensor]) -> np.ndarray: ...

    def flush(self) -> np.ndarray: ...


@runtime_checkable
class MelVocoder(Protocol):
    """The shared log-mel (models.audio.MelConfig) -> waveform: the last stage of every backend that predicts
    the mel. HiFi-GAN V1 (models.vocoder) is built in; a registered one (Vocos) is a checkpoint of this role,
    and models.vocoder.Vocoder runs either (devices, precision, chunks)."""

    n_mels: int
    hop_length: int
    receptive_frames: int  # mel frames on each side that reach an output frame: chunking margins

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) -> (batch, frames x hop_length)."""


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

    # What latent-sequence models (SLED, KALL-E) train on: the posterior of a batch of log-mels, cached
    # under a key that changes exactly when the posterior does.
    posterior_key: str

    def posterior(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, 80, frames) log-mel -> mean and log-std, each (batch, latent_dim, latent_frames)."""


@runtime_checkable
class TokenCodec(Protocol):
    """Audio <-> discrete tokens (ALMTokenizer): `num_codebooks` parallel streams of ids, at one of the
    `windows` it was trained for (a window sets the frame rate, hence the bitrate; None: its default)."""

    sample_rate: int
    num_codebooks: int
    codebook_size: int
    windows: tuple[int, ...]

    def check_window(self, window: int | None) -> int:
        """The window to use for `window` (None: the default); one clear line for one it does not serve."""

    def frame_rate_at(self, window: int | None = None) -> float:
        """Token frames per second at a window."""

    def bitrate_at(self, window: int | None = None) -> float:
        """Bits per second at a window: frame rate x num_codebooks x log2(codebook_size)."""

    def encode_wav(self, wav: np.ndarray, window: int | None = None) -> np.ndarray:
        """(samples,) -> int64 tokens (num_codebooks, frames)."""

    def decode_tokens(self, tokens: np.ndarray, window: int | None = None) -> np.ndarray:
        """(layers, frames) -> (samples,): all num_codebooks layers, or only the first (lowest) few, which
        decode coarser speech of the same length (what an acoustic decoder that generates fewer layers needs)."""

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
    """Audio -> semantic features and tokens (k-means of self-supervised features): Metis's semantic
    tokens and the frame-level condition its adapter adds (ALMTokenizer's prior quantizes the same
    features with its own residual k-means)."""

    sample_rate: int
    frame_rate: float  # tokens per second
    vocabulary_size: int

    def features_wav(self, wavs: list[np.ndarray], sr: int = ...) -> list[torch.Tensor]:
        """Waveforms -> continuous features (frames, dim) at frame_rate."""

    def tokens_wav(self, wav: np.ndarray, sr: int = ...) -> np.ndarray:
        """(samples,) -> (frames,) int64 ids below vocabulary_size."""

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(frames,) ids -> (frames, dim): the token's point in feature space."""


@runtime_checkable
class AcousticDecoder(Protocol):
    """Semantic tokens (and an acoustic prompt) -> tokens of a token codec: the second stage of a
    two-stage generator (Metis's masked acoustic decoder). Its config names the stages it sits between,
    so a pipeline composes them by name."""

    CONTROLS: ClassVar[dict[str, Control]]
    codec: str               # the token codec whose tokens it generates
    semantic_tokenizer: str  # the semantic tokenizer whose tokens it reads

    def generate_tokens(self, semantic: np.ndarray, prompt: AcousticPrompt | None, seed: int,
                        controls: dict[str, float]) -> np.ndarray:
        """semantic (frames,) ids of what to say, the voice to say it in (or None) -> (num_codebooks, frames')
        codec tokens of that speech alone (not the prompt's), at the codec's default window."""


@dataclass
class AcousticPrompt:
    """The voice an acoustic decoder speaks in: a clip's codec tokens and the semantic tokens of the same clip
    (a decoder that continues the clip reads both)."""

    tokens: np.ndarray  # (num_codebooks, frames) codec tokens
    semantic: np.ndarray  # (frames',) semantic ids


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


def with_defaults(controls: dict[str, Control], defaults: dict[str, float]) -> dict[str, Control]:
    """Controls with some defaults changed: what a checkpoint's own config sets (a TTS class's optional
    `control_defaults(config: dict) -> {name: value}`, read from config.json without loading weights)."""
    unknown = sorted(set(defaults) - set(controls))
    if unknown:
        raise ValueError(f"a default for {unknown[0]!r}, which is not a control (controls: {', '.join(controls)})")
    return {name: replace(c, default=float(defaults[name])) if name in defaults else c for name, c in controls.items()}


def number_text(x: float) -> str:
    """4294967295, not 4.29497e+09; 0.05 as 0.05."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass
class TTSRequest:
    """One sentence to speak. `prompt` is the reference clip in the backend's own form (what its
    `encode_prompt` returned: latents, tokens, ...), `prompt_text` its transcript and `reference` its audio
    (samples,) at 22.05 kHz, for a backend that reads the voice itself (KALL-E's speaker encoder);
    `cfg` None means no guidance."""

    text: str
    prompt: Any = None
    prompt_text: str | None = None
    cfg: float | None = 2.0
    seed: int = 0
    controls: dict[str, float] = field(default_factory=dict)  # values of the backend's CONTROLS
    reference: np.ndarray | None = None


@runtime_checkable
class TTSBackend(Protocol):
    """Text (and optionally a voice prompt) -> a waveform, one sentence at a time. How it gets there
    (autoregressive latents, masked tokens, anything) is its own; `codec` names the codec checkpoint its
    output passes through, or is None."""

    CONTROLS: ClassVar[dict[str, Control]]
    CAPABILITIES: ClassVar[frozenset[str]]
    codec: str | None

    def encode_prompt(self, reference: np.ndarray) -> Any:
        """A reference clip (samples,) -> the prompt a TTSRequest carries for this backend."""

    def synthesize(self, request: TTSRequest, precision: str = "fp32") -> np.ndarray:
        """The sentence spoken (samples,); empty when the backend decides there is nothing to say.
        `precision` is the vocoder's (models.vocoder.PRECISIONS) for a backend that ends in one."""


@runtime_checkable
class StreamingTTS(Protocol):
    """The STREAMING capability: frames as they are generated, decoded at once or chunk by chunk;
    synthesize() is then decode(frames)."""

    def frames(self, request: TTSRequest) -> Iterator[torch.Tensor]:
        """Frames (dim,) until the backend decides the sentence is spoken."""

    def decode(self, frames: list[torch.Tensor], precision: str = "fp32") -> np.ndarray:
        """All of a sentence's frames -> (samples,); empty for no frames."""

    def streaming_decoder(self, precision: str = "fp32") -> StreamingDecoder: ...


@runtime_checkable
class AdaptableTTS(Protocol):
    """The TEST_TIME_TRAINING capability: a weight delta fitted to one voice, applied for a generation."""

    def fit_voice(self, reference: np.ndarray, transcript: str, samples: int, lr: float,
                  progress: Callable[[int, int], None] | None = None) -> dict[str, torch.Tensor]:
        """Fit to one reference clip (22.05 kHz) and its transcript on `samples` samples at rate `lr`:
        the weight delta, the model left as it was."""

    def adapted(self, delta: dict[str, torch.Tensor] | None) -> AbstractContextManager: ...


@dataclass
class SpeechRequest:
    """One speech-to-speech job. `source` is the speech to convert (convert), the noisy recording
    (enhance) or the mixture (extract); `reference` the target voice (convert) or the enrollment clip
    (extract), None for enhance. Audio (samples,) at 22.05 kHz."""

    task: str
    source: np.ndarray
    reference: np.ndarray | None = None
    seed: int = 0
    controls: dict[str, float] = field(default_factory=dict)  # values of the backend's CONTROLS


@runtime_checkable
class SpeechToSpeech(Protocol):
    """Speech in, speech out (Metis's VC, SE and TSE fine-tunes). One class may serve several tasks
    through several checkpoints: the tasks a checkpoint serves are its config's `tasks`, so the menus
    know them without loading it; the pipeline refuses the others with one line."""

    CONTROLS: ClassVar[dict[str, Control]]
    tasks: tuple[str, ...]  # among SPEECH_TASKS, from the checkpoint's config

    def transform(self, request: SpeechRequest) -> np.ndarray:
        """The output speech (samples,)."""


CAPABILITY_INTERFACES = {STREAMING: StreamingTTS, TEST_TIME_TRAINING: AdaptableTTS}


def check_declared(name: str, role: str, target: type) -> None:
    """What a backend class declares holds: its controls are Controls, its capabilities are known and
    each comes with its interface (VOICE_SEEDS with a `voice_seed` control). Called when it registers."""
    controls = getattr(target, "CONTROLS", {})
    if not all(isinstance(c, Control) for c in controls.values()):
        raise TypeError(f"{name}: CONTROLS must map names to models.roles.Control")
    if role != TTS:
        return
    declared = getattr(target, "CAPABILITIES", None)
    if not isinstance(declared, frozenset):
        raise TypeError(f"{name}: a TTS backend declares CAPABILITIES, a frozenset of {', '.join(CAPABILITIES)}")
    if unknown := sorted(declared - set(CAPABILITIES)):
        raise TypeError(f"{name}: unknown capabilities {', '.join(unknown)} (known: {', '.join(CAPABILITIES)})")
    for capability in declared:
        interface = CAPABILITY_INTERFACES.get(capability)
        members = [m for m in vars(interface) if not m.startswith("_")] if interface else []
        missing = [m for m in members if not hasattr(target, m)]
        if missing:
            raise TypeError(f"{name} declares {capability} but has no {', '.join(sorted(missing))}")
    if VOICE_SEEDS in declared and "voice_seed" not in controls:
        raise TypeError(f"{name} declares {VOICE_SEEDS} but has no voice_seed control")
