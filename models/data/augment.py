"""Recording conditions: what a microphone, a channel and a small room do to speech, drawn at random
per utterance so that a codec trained on synthetic voices sees the conditions of real recordings
(and reconstructs what it is given: input and target are the same conditioned audio).

    level -> microphone colouration (random peaking EQ) -> band limits (high-pass, low-pass)
          -> small-room reverberation -> low-level noise -> clip to [-1, 1]
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import butter, fftconvolve, lfilter, sosfilt

from models import audio
from models.data.dataset import Feature
from models.data.tasks import colored_noise, room_impulse_response, scale_to_ratio


@dataclass(frozen=True)
class Conditions:
    probability: float = 0.7  # share of utterances given any condition; the rest stay clean
    eq_bands: tuple[int, int] = (1, 3)  # peaking filters per utterance
    eq_gain_db: float = 8.0  # each within +-this
    highpass: tuple[float, float, float] = (0.4, 50.0, 300.0)  # (probability, lowest, highest corner Hz)
    lowpass: tuple[float, float, float] = (0.3, 3400.0, 8000.0)
    reverb: tuple[float, float, float] = (0.3, 0.1, 0.4)  # (probability, RT60 range s): small rooms
    noise: tuple[float, float, float] = (0.5, 25.0, 50.0)  # (probability, SNR range dB): low-level
    level_db: tuple[float, float] = (-12.0, 6.0)


def peaking(wav: np.ndarray, sr: int, hz: float, gain_db: float, q: float) -> np.ndarray:
    """RBJ peaking-EQ biquad."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * hz / sr
    alpha = math.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * math.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * math.cos(w0), 1 - alpha / a])
    return lfilter(b / den[0], den / den[0], wav)


def apply_conditions(wav: np.ndarray, sr: int, rng: np.random.Generator, c: Conditions = Conditions()) -> np.ndarray:
    """One random recording condition applied to a mono float waveform; same length, finite, in [-1, 1]."""
    wav = np.asarray(wav, np.float64)
    if rng.random() >= c.probability or not len(wav):
        return wav.astype(np.float32)
    wav = wav * 10 ** (rng.uniform(*c.level_db) / 20)
    for _ in range(rng.integers(c.eq_bands[0], c.eq_bands[1] + 1)):
        hz = math.exp(rng.uniform(math.log(150.0), math.log(min(7000.0, 0.45 * sr))))
        wav = peaking(wav, sr, hz, rng.uniform(-c.eq_gain_db, c.eq_gain_db), rng.uniform(0.5, 2.0))
    if rng.random() < c.highpass[0]:
        wav = sosfilt(butter(2, rng.uniform(*c.highpass[1:]), "highpass", fs=sr, output="sos"), wav)
    if rng.random() < c.lowpass[0]:
        wav = sosfilt(butter(6, min(rng.uniform(*c.lowpass[1:]), 0.45 * sr), "lowpass", fs=sr, output="sos"), wav)
    if rng.random() < c.reverb[0]:
        rir = room_impulse_response(rng.uniform(*c.reverb[1:]), _python_rng(rng))
        wav = fftconvolve(wav, rir)[: len(wav)]
    if rng.random() < c.noise[0] and np.any(wav):
        noise = colored_noise(len(wav), rng.choice([0.0, 1.0, 2.0]), _python_rng(rng))
        wav = wav + scale_to_ratio(wav, noise, rng.uniform(*c.noise[1:]))
    return np.clip(np.nan_to_num(wav), -1.0, 1.0).astype(np.float32)


def _python_rng(rng: np.random.Generator) -> random.Random:
    return random.Random(int(rng.integers(2**63)))


WINDOW_SECONDS = 2.0  # conditioned per read: a random window, more than codec training's 1.5 s crops


def conditioned_mel(wav: np.ndarray) -> torch.Tensor:
    """The shared mel of a random WINDOW_SECONDS of the waveform under a random recording condition
    (conditioning whole utterances cost 3x a training step). The generator is seeded from torch's,
    which the data loader seeds per worker and the trainer per run."""
    rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
    window = int(WINDOW_SECONDS * audio.SAMPLE_RATE)
    if len(wav) > window:
        start = int(rng.integers(len(wav) - window + 1))
        wav = wav[start:start + window]
    return audio.mel_spectrogram(apply_conditions(wav, audio.SAMPLE_RATE, rng))


def conditioned_wav(wav: np.ndarray) -> torch.Tensor:
    """The whole waveform (1, samples) under a random recording condition, seeded as conditioned_mel."""
    rng = np.random.default_rng(int(torch.randint(2**62, (1,))))
    return torch.from_numpy(apply_conditions(wav, audio.SAMPLE_RATE, rng))[None]


# A different draw at every read: never cached (the dataset caches only `cached` features).
MEL_CONDITIONS = Feature("mel_conditions", conditioned_mel, audio.SAMPLE_RATE / audio.MelConfig().hop_length,
                         cached=False)
WAV_CONDITIONS = Feature("wav_conditions", conditioned_wav, audio.SAMPLE_RATE, cached=False)
