"""Pseudo-speakers: a new identity made from a voice by one transform applied alike to all of its
utterances (vocal-tract length, F0 level and range, spectral tilt, breathiness, speaking rate).

The F0 and duration a transform asks for are requested from the engine where it can shift pitch,
pre-compensated for the formant resampling that follows, so the formants and F0 move apart; the
resampling itself is `formant` (> 1: a shorter vocal tract). Parameters are drawn from the
pseudo-speaker's name alone, so a rebuild, a resume or another machine gives the same person,
and a pseudo-speaker of a held-out voice is held out with it.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import asdict, replace

import numpy as np
from scipy.signal import butter, lfilter, sosfilt

from models import audio
from models.data.voices import ENGINES, SpeakerTransform, Voice

FORMANT = (0.86, 1.16)
MIN_FORMANT_SHIFT = 0.04  # |log factor|: closer to 1 the identity barely moves
PITCH = (-4.0, 4.0)  # semitones
PITCH_RANGE = (0.6, 1.6)
# Duller and faster pseudo-speakers cost the most intelligibility once breath was capped (second build:
# +4.0 WER points over the source voices, tilt below 0 dB and rate under 1.05 +5 to +6; docs/corpus.md).
TILT = (-3.0, 4.0)  # dB above TILT_CORNER_HZ
# Breath noise costs intelligibility fast: at 0.15-0.2 x the voice's RMS Whisper's WER rose 19 points over
# the source voice, under 0.05 it rose 2.6 (corpus v2 first build, 670 utterances; docs/corpus.md).
BREATH = (0.0, 0.04)
RATE = (0.95, 1.15)  # duration factor: normal to slower
TILT_CORNER_HZ = 2000.0


def pseudo_voices(base: list[Voice], per_voice: int, sources: int | None = None) -> list[Voice]:
    """`per_voice` pseudo-speakers of each base voice (of the first `sources` base voices when
    given), named `<voice>-p<k>`."""
    out = []
    for voice in base[:sources] if sources is not None else base:
        for k in range(1, per_voice + 1):
            name = f"{voice.name}-p{k}"
            out.append(replace(voice, speaker=name, core=False, transform=draw_transform(name), source=voice.name))
    return out


def draw_transform(name: str) -> SpeakerTransform:
    """The transform of the pseudo-speaker `name`: the same on every build."""
    rng = random.Random(zlib.crc32(name.encode()))
    low, high = math.log(FORMANT[0]), math.log(FORMANT[1])
    while abs(log_formant := rng.uniform(low, high)) < MIN_FORMANT_SHIFT:
        pass
    return SpeakerTransform(formant=round(math.exp(log_formant), 3), pitch=round(rng.uniform(*PITCH), 2),
                            pitch_range=round(rng.uniform(*PITCH_RANGE), 2), tilt=round(rng.uniform(*TILT), 1),
                            breath=round(rng.uniform(*BREATH), 3), rate=round(rng.uniform(*RATE), 3))


def engine_request(voice: Voice, rate: float, pitch: float) -> tuple[float, float]:
    """The (duration stretch, semitones) to ask the engine for, so that after the formant
    resampling the utterance has `rate` x the transform's rate and `pitch` + the transform's pitch."""
    t = voice.transform
    if t is None:
        return rate, pitch
    stretch = rate * t.rate * t.formant  # the resampling shortens by 1 / formant
    if not ENGINES[voice.engine].pitch:
        return stretch, pitch  # F0 moves with the formants
    return stretch, pitch + t.pitch - 12 * math.log2(t.formant)


def apply_transform(wav: np.ndarray, sr: int, t: SpeakerTransform, seed: int) -> np.ndarray:
    """The signal part of a transform: formant resampling, spectral tilt, breath noise. Finite,
    float32; the level is set afterwards by the corpus builder."""
    wav = np.asarray(wav, np.float32)
    if t.formant != 1.0:  # read at formant x the rate: every frequency x formant, duration / formant
        wav = audio.resample(wav, int(round(sr * t.formant)), sr)
    if t.tilt:
        wav = high_shelf(wav, sr, t.tilt)
    if t.breath:
        wav = wav + breath_noise(wav, sr, t.breath, np.random.default_rng(seed))
    return np.nan_to_num(wav).astype(np.float32)


def high_shelf(wav: np.ndarray, sr: int, gain_db: float) -> np.ndarray:
    """RBJ high-shelf biquad (slope 1) at TILT_CORNER_HZ: gain_db above it, 0 dB well below."""
    a = 10 ** (gain_db / 40)
    w0 = 2 * math.pi * TILT_CORNER_HZ / sr
    alpha = math.sin(w0) / 2 * math.sqrt(2)
    cos, root = math.cos(w0), 2 * math.sqrt(a) * alpha
    b = [a * ((a + 1) + (a - 1) * cos + root), -2 * a * ((a - 1) + (a + 1) * cos), a * ((a + 1) + (a - 1) * cos - root)]
    den = [(a + 1) - (a - 1) * cos + root, 2 * ((a - 1) - (a + 1) * cos), (a + 1) - (a - 1) * cos - root]
    return lfilter(np.array(b) / den[0], np.array(den) / den[0], wav).astype(np.float32)


def breath_noise(wav: np.ndarray, sr: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """Aspiration: noise above 1.5 kHz that follows the voice's amplitude, `level` x its RMS."""
    noise = sosfilt(butter(2, 1500, "highpass", fs=sr, output="sos"), rng.standard_normal(len(wav)))
    window = max(1, int(0.01 * sr))
    envelope = np.convolve(np.abs(wav), np.ones(window) / window, mode="same")
    shaped = noise * envelope
    rms_voice, rms_noise = np.sqrt(np.mean(wav ** 2)), np.sqrt(np.mean(shaped ** 2))
    return (shaped * (level * rms_voice / max(rms_noise, 1e-12))).astype(np.float32)


def describe(voice: Voice) -> dict:
    """What a manifest row records of a pseudo-speaker: its source voice and parameters."""
    return {"source_voice": voice.source, "transform": asdict(voice.transform)} if voice.transform else {}
