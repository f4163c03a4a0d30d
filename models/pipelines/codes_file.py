"""The codes file: a recording's tokens or latents in an .npz with a JSON header naming its codec, so it
decodes later (and elsewhere) to the same audio. Never a pickle."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from models import audio, registry
from models.files import atomic_path
from models.pipelines.codecs import CODECS, fit_length, latent_codec, token_codec
from models.roles import LATENT_CODEC, TOKEN_CODEC

CODES_FORMAT = "speech-studio codes v1"


def encode_file(wav: np.ndarray, sr: int, codec: str, out: str | os.PathLike, window: int | None = None,
                device: str | None = None, max_seconds: float | None = audio.MAX_SECONDS) -> dict:
    """A recording's codes in an .npz: a token codec's int64 tokens (codebooks, frames), or a latent
    codec's posterior means (frames, dims), with a JSON header naming the codec, its window and bitrate
    (no pickles: the header is a string array). Written to a temp file, then renamed."""
    wav = audio.prepare_audio(wav, sr, max_seconds=max_seconds, name="input audio")
    role = None if codec in CODECS else registry.checkpoint_role(codec)
    if role == TOKEN_CODEC:
        model = token_codec(codec, device)
        window = model.check_window(window)
        codes = model.encode_wav(wav, window)
        header = {"kind": "tokens", "window": window, "bitrate": model.bitrate_at(window),
                  "frame_rate": model.frame_rate_at(window), "codebook_size": model.codebook_size}
    elif role == LATENT_CODEC and window is None:
        model = latent_codec(codec, device)
        codes = model.encode_wav(wav)[0].astype(np.float32)
        header = {"kind": "latents", "frame_rate": model.frame_rate}
    elif window is not None and role == LATENT_CODEC:
        raise ValueError(f"only a token codec takes a window (bitrate); {codec} is not one")
    else:
        raise ValueError(f"{codec} is not a codec checkpoint with codes to store (a token or latent codec)")
    header.update(format=CODES_FORMAT, codec=codec, samples=len(wav), sample_rate=audio.SAMPLE_RATE)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, codes=codes, header=np.array(json.dumps(header)))
    return header


def decode_file(path: str | os.PathLike, device: str | None = None,
                codec: str | None = None) -> tuple[np.ndarray, dict]:
    """The audio (22.05 kHz) of an .npz written by encode_file, through the codec it names (or `codec`)."""
    name = Path(path).name  # messages name the file, never the folder it was uploaded to
    if not Path(path).is_file():
        raise ValueError(f"codes file {name} not found")
    if not zipfile.is_zipfile(path):  # np.load would call any other bytes "pickled data"
        raise ValueError(f"{name} is not a codes file written by `codec encode` (an .npz archive)"
                         + (": it is empty (0 bytes)" if Path(path).stat().st_size == 0 else ""))
    try:
        with np.load(path, allow_pickle=False) as data:
            codes, header = data["codes"], json.loads(str(data["header"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"{name} is not a codes file written by `codec encode`: {error}") from None
    if not isinstance(header, dict) or header.get("format") != CODES_FORMAT:
        raise ValueError(f"{name}: not a `codec encode` header of format {CODES_FORMAT!r}")
    missing = [k for k in ("kind", "codec", "samples") + (("window",) if header.get("kind") == "tokens" else ())
               if k not in header]
    if missing or header["kind"] not in ("tokens", "latents"):
        raise ValueError(f"{name}: its header lacks {', '.join(missing) or 'a known kind'}")
    codec = codec or header["codec"]
    if header["kind"] == "tokens":
        model = token_codec(codec, device)
        out = model.decode_tokens(codes, header["window"])
    else:
        out = latent_codec(codec, device).decode_wav(codes)
    return fit_length(out, int(header["samples"])), header
