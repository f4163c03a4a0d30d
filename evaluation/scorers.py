"""The evaluation bench's measures as the training harness takes them (models.roles.Scorers):
validation scores with the same PESQ, STOI, ASR and WER as `speech-studio eval`, while the
harness and the recipes never import this package."""

from __future__ import annotations

import functools

import numpy as np

from evaluation.metrics import pesq_score, stoi_score
from evaluation.metrics.asr import DEFAULT_ASR, load_asr, wer_counts
from evaluation.metrics.speaker import cosine, load_ge2e
from models import audio
from models.roles import Scorers


@functools.lru_cache(maxsize=4)
def training_scorers(device: str = "cpu") -> Scorers:
    """PESQ-wb and STOI against the input, the default ASR and its WER counts, and the GE2E speaker
    similarity of the `sim` metric (each model loaded on first use, once per device)."""

    def signal(reference: np.ndarray, output: np.ndarray, sr: int) -> dict[str, float]:
        return {"pesq_wb": pesq_score(reference, output, sr, "wb"), "stoi": stoi_score(reference, output, sr)}

    @functools.lru_cache(maxsize=1)
    def asr():
        return load_asr(DEFAULT_ASR, device)

    def transcribe(wav: np.ndarray, sr: int) -> str:
        return asr().transcribe(audio.resample(wav, sr, 16000))

    def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
        counts = wer_counts(reference, hypothesis)
        return counts.errors, counts.reference_length

    @functools.lru_cache(maxsize=1)
    def speaker_encoder():
        return load_ge2e(device)

    def similarity(a: np.ndarray, b: np.ndarray, sr: int) -> float:
        embed = speaker_encoder().embed
        return cosine(embed(audio.resample(a, sr, 16000)), embed(audio.resample(b, sr, 16000)))

    return Scorers(signal=signal, transcribe=transcribe, word_errors=word_errors, similarity=similarity)
