"""One function per user-facing task. The studio and the CLI call these and nothing deeper.

Every function takes audio as (samples, sample_rate) arrays or a path, validates it, and
returns audio at models.audio.SAMPLE_RATE plus a dict of the settings it used.
"""

from __future__ import annotations

import time

import numpy as np

from models import audio
from models.vocoder import get_vocoder

CODECS = ("vocoder",)  # plus trained latent codecs: a checkpoint name or folder (e.g. flow_vae)
LATENT_CODECS = ("flow_vae",)  # registry models with encode_wav / decode_wav


def available_codecs() -> list[str]:
    """The vocoder plus every local codec checkpoint (for menus)."""
    from models import registry

    return list(CODECS) + [name for kind in LATENT_CODECS for name in registry.list_checkpoints(kind)]


def _codec_model(codec: str, device: str | None):
    """The resident model behind a codec checkpoint name; a clear error for anything else."""
    from models import registry

    try:
        model, config, _ = registry.load_model(codec, device)
    except registry.CheckpointNotFound as error:
        raise ValueError(f"unknown codec {codec!r}: not one of {', '.join(CODECS)}, and {error}") from None
    if config.get("model") not in LATENT_CODECS:
        raise ValueError(f"checkpoint {codec!r} is a {config.get('model')} model, not a codec")
    return model


def reconstruct(
    wav: np.ndarray, sr: int, codec: str = "vocoder", device: str | None = None,
    max_seconds: float | None = audio.MAX_SECONDS,
) -> tuple[np.ndarray, dict]:
    """Analysis-resynthesis through a codec; returns (audio at 22.05 kHz, info).

    "vocoder" is the mel -> HiFi-GAN round trip, the ceiling for every mel-based model.
    """
    wav = audio.prepare_audio(wav, sr, max_seconds=max_seconds, name="input audio")
    if codec == "vocoder":
        vocoder = get_vocoder(device)
        run_device = str(vocoder.device)
        start = time.perf_counter()
        out = vocoder.resynthesize(wav)
    else:
        model = _codec_model(codec, device)
        run_device = str(next(model.parameters()).device)
        start = time.perf_counter()
        mu, _ = model.encode_wav(wav)
        out = model.decode_wav(mu)  # the posterior mean: reconstruction without sampling noise
    seconds = time.perf_counter() - start
    duration = len(wav) / audio.SAMPLE_RATE
    return out, {
        "codec": codec, "device": run_device, "input_seconds": round(duration, 3),
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
    wav = audio.prepare_audio(wav, sr, max_seconds=max_seconds, name="input audio")
    if codec == "vocoder":
        return get_vocoder(device).analyze(wav).T.cpu().numpy(), None
    return _codec_model(codec, device).encode_wav(wav)
