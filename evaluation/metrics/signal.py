"""Intrusive signal metrics: PESQ (ITU-T P.862) and STOI / ESTOI, against a reference."""

from __future__ import annotations

import numpy as np

from models.audio import resample

PESQ_RATES = {"wb": 16000, "nb": 8000}


class MetricError(ValueError):
    """A metric that cannot be computed for this input, and why."""


def _aligned(reference: np.ndarray, degraded: np.ndarray, sr: int, target_sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Both signals at target_sr, cut to the shorter (vocoders drop a partial last frame)."""
    ref = resample(np.asarray(reference, np.float32), sr, target_sr)
    deg = resample(np.asarray(degraded, np.float32), sr, target_sr)
    n = min(len(ref), len(deg))
    if n < target_sr // 4:
        raise MetricError(f"signals too short to score ({n / target_sr:.2f} s, need 0.25 s)")
    return ref[:n].astype(np.float64), deg[:n].astype(np.float64)


def pesq_score(reference: np.ndarray, degraded: np.ndarray, sr: int, mode: str = "wb") -> float:
    """PESQ wide band at 16 kHz ("wb", MOS-LQO 1.04-4.64) or narrow band at 8 kHz ("nb")."""
    from pesq import PesqError, pesq

    if mode not in PESQ_RATES:
        raise MetricError(f"PESQ mode must be wb or nb, not {mode!r}")
    ref, deg = _aligned(reference, degraded, sr, PESQ_RATES[mode])
    try:
        return float(pesq(PESQ_RATES[mode], ref, deg, mode))
    except PesqError as error:  # e.g. no utterance detected in a silent reference
        raise MetricError(f"PESQ failed: {type(error).__name__}") from error


def stoi_score(reference: np.ndarray, degraded: np.ndarray, sr: int, extended: bool = False) -> float:
    """STOI (or ESTOI with extended=True) at 16 kHz; pystoi resamples to 10 kHz inside."""
    from pystoi import stoi

    ref, deg = _aligned(reference, degraded, sr, 16000)
    return float(stoi(ref, deg, 16000, extended=extended))
