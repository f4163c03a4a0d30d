"""Test-time-trained voices: a TTS backend fitted to one reference clip, checked against the unfitted
model before it is used, and kept in memory per owner (a studio visitor's session) and reference."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections import OrderedDict
from typing import Callable

import numpy as np

from models import audio
from models.pipelines.common import SETTINGS, TTS_VOCODER_PRECISION, TTT_LR, checkpoint_model, turn
from models.roles import TEST_TIME_TRAINING, TTS, Scorers, TTSRequest

MAX_FITTED_VOICES = 8  # test-time-trained voices kept in memory (least recently used dropped)
# A fitted voice is kept only if it speaks these check sentences (prompted by its reference, same seeds) no
# worse than the unfitted model: each length within TTT_CHECK_RATIO of the unfitted one (fitting can break the
# model's sense of where speech ends), and, with scorers, no more word errors and no lower similarity to the
# reference. A duration check alone let through fits that garbled real recordings.
TTT_CHECK_TEXTS = ("The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
                   "These days a chicken leg is a rare dish.")
TTT_CHECK_RATIO = (0.8, 1.2)

_FITTED: OrderedDict[tuple[str, str], tuple[dict, dict]] = OrderedDict()  # (owner, voice) -> (weight delta, info)
_FITTED_LOCK = threading.RLock()


def fit_voice(model: str, ref: np.ndarray, ref_text: str, samples: int, device: str | None = None,
              progress: Callable[[int, int], None] | None = None, lr: float = TTT_LR,
              owner: str = "", scorers: Scorers | None = None) -> tuple[dict, dict]:
    """Test-time training of a TTS model on one reference clip (22.05 kHz) and its transcript at
    learning rate `lr`: the model's weight delta for that voice, kept in memory (MAX_FITTED_VOICES,
    least recently used go) so the same reference is fitted once per `owner` (a studio visitor's
    session: one visitor never uses or clears another's fit). A fit that speaks the TTT_CHECK_TEXTS
    worse than the unfitted model (lengths; with `scorers`' transcribe, word_errors and similarity, also
    intelligibility and likeness to the reference) is refused: an empty delta, and info["refused"] says
    why. Returns (delta, info)."""
    backend, _ = checkpoint_model(model, TTS, device)
    if TEST_TIME_TRAINING not in backend.CAPABILITIES:
        raise ValueError(f"{model} has no test-time training (a backend declares {TEST_TIME_TRAINING})")
    SETTINGS["ttt"].check("test-time training samples", samples)
    SETTINGS["ttt_lr"].check("test-time training learning rate", lr)
    key = hashlib.sha256(b"".join([model.encode(), ref.astype(np.float32).tobytes(), ref_text.encode(),
                                   str(samples).encode(), repr(lr).encode()])).hexdigest()[:16]
    with _FITTED_LOCK:
        if (owner, key) in _FITTED:
            _FITTED.move_to_end((owner, key))
            delta, info = _FITTED[owner, key]
            return delta, {**info, "cached": True}
    start = time.perf_counter()
    with turn(backend):  # training moves the resident weights
        delta = backend.fit_voice(ref, ref_text, samples, lr, progress)
        check, worse = _check(backend, ref, ref_text, delta, scorers)
    info = {"voice": key, "cached": False, "samples": samples, "lr": lr, "check": check,
            "wall_seconds": round(time.perf_counter() - start, 2)}
    if worse:
        info["refused"] = (f"fitting did not help this voice: {worse}, so synthesis keeps the unfitted model "
                           "for this clip")
        delta = {}
    with _FITTED_LOCK:
        _FITTED[owner, key] = (delta, info)
        while len(_FITTED) > MAX_FITTED_VOICES:
            _FITTED.popitem(last=False)
    return delta, info


def _check(backend, ref: np.ndarray, ref_text: str, delta: dict, scorers: Scorers | None) -> tuple[dict, str | None]:
    """The TTT_CHECK_TEXTS spoken without and with the fitted voice: (what was measured, how the fitted
    model is worse, or None)."""
    settings = {name: control.default for name, control in backend.CONTROLS.items()}
    prompt = backend.encode_prompt(ref)
    spoken: dict[str, list[np.ndarray]] = {"plain": [], "fitted": []}
    for index, text in enumerate(TTT_CHECK_TEXTS):
        request = TTSRequest(text, prompt, ref_text, 2.0, index, settings, reference=ref)
        for which in spoken:
            with backend.adapted(delta) if which == "fitted" else contextlib.nullcontext():
                spoken[which].append(backend.synthesize(request, TTS_VOCODER_PRECISION))
    ratios = [len(f) / max(len(p), 1) for p, f in zip(spoken["plain"], spoken["fitted"])]
    check: dict = {"length_ratios": [round(r, 3) for r in ratios]}
    outside = [r for r in ratios if not TTT_CHECK_RATIO[0] <= r <= TTT_CHECK_RATIO[1]]
    if outside:
        return check, f"the fitted model spoke a check sentence {outside[0]:.1f}x as long as the unfitted one"
    if scorers is None or scorers.transcribe is None or scorers.word_errors is None or scorers.similarity is None:
        return check, None
    rate = audio.SAMPLE_RATE
    errors = {which: sum(scorers.word_errors(text, scorers.transcribe(wav, rate))[0]
                         for text, wav in zip(TTT_CHECK_TEXTS, wavs)) for which, wavs in spoken.items()}
    likeness = {which: float(np.mean([scorers.similarity(ref, wav, rate) for wav in wavs]))
                for which, wavs in spoken.items()}
    check.update(word_errors=errors, similarity={k: round(v, 3) for k, v in likeness.items()})
    if errors["fitted"] > errors["plain"]:
        return check, (f"the fitted model made {errors['fitted']} word errors in the check sentences against "
                       f"{errors['plain']} for the unfitted one")
    if likeness["fitted"] < likeness["plain"]:
        return check, (f"the fitted model sounds less like the reference than the unfitted one "
                       f"({likeness['fitted']:.2f} similarity against {likeness['plain']:.2f})")
    return check, None


def clear_fitted_voices(owner: str | None = None) -> int:
    """Forget the test-time-trained voices of one owner (None: everyone's); returns how many there were."""
    with _FITTED_LOCK:
        gone = [key for key in _FITTED if owner is None or key[0] == owner]
        for key in gone:
            del _FITTED[key]
    return len(gone)
