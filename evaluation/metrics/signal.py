"""Intrusive signal metrics against a clean reference: PESQ (ITU-T P.862), STOI / ESTOI, SI-SDR."""

from __future__ import annotations

import numpy as np

from evaluation.metrics.base import METRIC_RATE, MetricError, Sample, metric, package_version
from models.audio import resample

PESQ_RATES = {"wb": 16000, "nb": 8000}
# An output equal to its reference has infinite SI-SDR; the noise floor caps it near 100 dB.
SI_SDR_FLOOR = 1e-10


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


def si_sdr(reference: np.ndarray, estimate: np.ndarray, sr: int) -> float:
    """Scale-invariant SDR in dB (Le Roux et al. 2019), both signals zero-mean at 16 kHz."""
    ref, est = _aligned(reference, estimate, sr, 16000)
    ref, est = ref - ref.mean(), est - est.mean()
    energy = np.dot(ref, ref)
    if energy <= 0:
        raise MetricError("the reference is silent")
    target = np.dot(est, ref) / energy * ref
    noise = est - target
    floor = SI_SDR_FLOOR * energy
    return float(10 * np.log10((np.dot(target, target) + floor) / (np.dot(noise, noise) + floor)))


class _Signal:
    def __init__(self, score, info: dict):
        self.score, self.info = score, info

    def __call__(self, sample: Sample) -> dict[str, float]:
        return self.score(sample)

    def close(self) -> None:
        pass


@metric("pesq", ("pesq_wb", "pesq_nb"), needs=("reference",), higher_is_better=True,
        description="PESQ wide band (16 kHz) and narrow band (8 kHz), MOS-LQO")
def _pesq(device: str, options: dict) -> _Signal:
    def score(sample: Sample) -> dict[str, float]:
        ref, out = sample.audio("reference"), sample.audio()
        return {"pesq_wb": pesq_score(ref, out, METRIC_RATE, "wb"), "pesq_nb": pesq_score(ref, out, METRIC_RATE, "nb")}

    return _Signal(score, {"package": f"pesq {package_version('pesq')}"})


@metric("stoi", ("stoi", "estoi"), needs=("reference",), higher_is_better=True,
        description="STOI and extended STOI (0-1)")
def _stoi(device: str, options: dict) -> _Signal:
    def score(sample: Sample) -> dict[str, float]:
        ref, out = sample.audio("reference"), sample.audio()
        return {"stoi": stoi_score(ref, out, METRIC_RATE), "estoi": stoi_score(ref, out, METRIC_RATE, extended=True)}

    return _Signal(score, {"package": f"pystoi {package_version('pystoi')}"})


@metric("sisdr", ("si_sdr", "si_sdr_i"), needs=("reference",), higher_is_better=True,
        description="SI-SDR in dB, and its improvement over the system's input when the manifest has one")
def _sisdr(device: str, options: dict) -> _Signal:
    def score(sample: Sample) -> dict[str, float]:
        ref = sample.audio("reference")
        values = {"si_sdr": si_sdr(ref, sample.audio(), METRIC_RATE)}
        if sample.input_path is not None:
            values["si_sdr_i"] = values["si_sdr"] - si_sdr(ref, sample.audio("input"), METRIC_RATE)
        return values

    return _Signal(score, {"formula": "SI-SDR, zero-mean, 16 kHz, capped near 100 dB"})
