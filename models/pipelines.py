"""One function per user-facing task. The studio and the CLI call these and nothing deeper.

Every function takes audio as (samples, sample_rate) arrays or a path, validates it, and
returns audio at models.audio.SAMPLE_RATE plus a dict of the settings it used.
"""

from __future__ import annotations

import time

import numpy as np

from models import audio
from models.vocoder import get_vocoder

CODECS = ("vocoder",)


def reconstruct(
    wav: np.ndarray, sr: int, codec: str = "vocoder", device: str | None = None,
    max_seconds: float | None = audio.MAX_SECONDS,
) -> tuple[np.ndarray, dict]:
    """Analysis-resynthesis through a codec; returns (audio at 22.05 kHz, info).

    "vocoder" is the mel -> HiFi-GAN round trip, the ceiling for every mel-based model.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r} (available: {', '.join(CODECS)})")
    wav = audio.prepare_audio(wav, sr, max_seconds=max_seconds, name="input audio")
    vocoder = get_vocoder(device)
    start = time.perf_counter()
    out = vocoder.resynthesize(wav)
    seconds = time.perf_counter() - start
    duration = len(wav) / audio.SAMPLE_RATE
    return out, {
        "codec": codec, "device": str(vocoder.device), "input_seconds": round(duration, 3),
        "wall_seconds": round(seconds, 3), "rtf": round(seconds / duration, 4),
    }


def encode_latents(
    wav: np.ndarray, sr: int, codec: str = "vocoder", device: str | None = None,
    max_seconds: float | None = audio.MAX_SECONDS,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A codec's latent frames for one recording: (mean (frames, dims), std or None).

    A variational codec gives its posterior mean and standard deviation; the "vocoder"
    codec's latents are its 80-band log-mel frames, deterministic (std None).
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r} (available: {', '.join(CODECS)})")
    wav = audio.prepare_audio(wav, sr, max_seconds=max_seconds, name="input audio")
    mel = get_vocoder(device).analyze(wav)
    return mel.T.cpu().numpy(), None
