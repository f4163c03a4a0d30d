"""Codecs: the menus of what can code speech, analysis-resynthesis through any of them, and their latent
or token view of a recording."""

from __future__ import annotations

import time

import numpy as np

from models import audio, classical_codecs, registry
from models.pipelines.common import checkpoint_model
from models.roles import LATENT_CODEC, TOKEN_CODEC, VOCODER
from models.vocoder import get_vocoder

# Built in: the vocoder's analysis-resynthesis and the classical baselines; trained codecs are checkpoints
# of the latent- or token-codec role, and a vocoder checkpoint (Vocos) codes as the mel round trip through it.
CODECS = ("vocoder", *classical_codecs.CODECS)


def available_codecs() -> list[str]:
    """The built-in codecs plus every local codec checkpoint, latent and token, and every vocoder (for menus)."""
    return list(CODECS) + available_latent_codecs() + available_token_codecs() + available_vocoders()


def available_vocoders() -> list[str]:
    """Every local vocoder checkpoint: the mel round trip through it, beside the shared vocoder's."""
    return registry.checkpoints_with_role(VOCODER)


def is_vocoder(codec: str) -> bool:
    """The mel round trip: the shared vocoder ("vocoder", whichever is chosen) or a vocoder checkpoint."""
    return codec == "vocoder" or registry.checkpoint_role(codec) == VOCODER


def mel_vocoder(codec: str, device: str | None = None):
    """The models.vocoder.Vocoder a mel round-trip codec runs (the chosen one for "vocoder")."""
    return get_vocoder(device, name=None if codec == "vocoder" else codec)


def available_latent_codecs() -> list[str]:
    """Every local latent codec checkpoint (for menus of what has latents to explore)."""
    return registry.checkpoints_with_role(LATENT_CODEC)


def available_token_codecs() -> list[str]:
    """Every local token codec checkpoint (ALMTokenizer)."""
    return registry.checkpoints_with_role(TOKEN_CODEC)


def is_token_codec(codec: str) -> bool:
    return codec not in CODECS and registry.checkpoint_role(codec) == TOKEN_CODEC


def token_codec(codec: str, device: str | None = None):
    """The resident token codec behind a checkpoint name (models.roles.TokenCodec)."""
    return checkpoint_model(codec, TOKEN_CODEC, device)[0]


def latent_codec(codec: str, device: str | None = None):
    """The resident latent codec behind a checkpoint name (models.roles.LatentCodec)."""
    return checkpoint_model(codec, LATENT_CODEC, device, CODECS)[0]


def codec_windows(codec: str) -> tuple[int, ...]:
    """The windows (bitrates) a token codec checkpoint serves; () for any other codec."""
    return tuple(token_codec(codec).windows) if is_token_codec(codec) else ()


def codec_layers(codec: str) -> int:
    """How many token layers a token codec checkpoint has (its first ones decode alone); 0 for any other."""
    return int(token_codec(codec).num_codebooks) if is_token_codec(codec) else 0


def codec_bitrate(codec: str, window: int | None = None, device: str | None = None) -> float | None:
    """Bits per second of a codec (at a token codec's window); None for the vocoder and latent codecs,
    whose frames are continuous."""
    if codec in classical_codecs.CODECS:
        return classical_codecs.CODECS[codec].bitrate
    return token_codec(codec, device).bitrate_at(window) if is_token_codec(codec) else None


def fit_length(wav: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad a decoded waveform to the input's length (codecs pad to whole frames)."""
    return wav[:length] if len(wav) >= length else np.pad(wav, (0, length - len(wav)))


def reconstruct(
    wav: np.ndarray, sr: int, codec: str = "vocoder", device: str | None = None,
    max_seconds: float | None = audio.MAX_SECONDS, window: int | None = None, layers: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Analysis-resynthesis through a codec; returns (audio at 22.05 kHz, info).

    "vocoder" is the mel -> vocoder round trip (HiFi-GAN unless another is chosen; a vocoder checkpoint
    names its own), the ceiling for every mel-based model; a classical
    codec (Codec 2, Opus) runs its reference tools; a latent codec decodes its posterior mean; a token
    codec its tokens at `window` (its bitrate; default the checkpoint's), all its layers or the first
    `layers` (what an acoustic decoder generating that many would be heard through at best).
    """
    wav = audio.prepare_audio(wav, sr, max_seconds=max_seconds, name="input audio")
    tokens_codec = is_token_codec(codec)
    if window is not None and not tokens_codec:
        raise ValueError(f"only a token codec takes a window (bitrate); {codec} is not one")
    if layers is not None and not tokens_codec:
        raise ValueError(f"only a token codec takes layers; {codec} is not one")
    extra: dict = {}
    if is_vocoder(codec):
        vocoder = mel_vocoder(codec, device)
        run_device = str(vocoder.device)
        start = time.perf_counter()
        out = vocoder.resynthesize(wav)
    elif codec in classical_codecs.CODECS:
        run_device, start = "cpu", time.perf_counter()
        out, bits = classical_codecs.CODECS[codec].roundtrip(wav)
        extra = {"bitrate": classical_codecs.CODECS[codec].bitrate, "coded_bits": bits}
    elif tokens_codec:
        model = token_codec(codec, device)
        window = model.check_window(window)
        layers = model.num_codebooks if layers is None else layers
        if not 1 <= layers <= model.num_codebooks:
            raise ValueError(f"layers must be 1..{model.num_codebooks} for {codec}, not {layers}")
        run_device = str(next(model.parameters()).device)
        start = time.perf_counter()
        tokens = model.encode_wav(wav, window)[:layers]
        out = fit_length(model.decode_tokens(tokens, window), len(wav))
        bitrate = model.bitrate_at(window) * layers / model.num_codebooks
        extra = {"window": window, "bitrate": round(bitrate, 1), "tokens": list(tokens.shape)}
    else:
        model = latent_codec(codec, device)
        run_device = str(next(model.parameters()).device)
        start = time.perf_counter()
        mu, _ = model.encode_wav(wav)
        out = model.decode_wav(mu)  # the posterior mean: reconstruction without sampling noise
    seconds = time.perf_counter() - start
    duration = len(wav) / audio.SAMPLE_RATE
    return out, {
        "codec": codec, **({"vocoder": vocoder.name} if is_vocoder(codec) else {}), "device": run_device,
        "input_seconds": round(duration, 3),
        "wall_seconds": round(seconds, 3), "rtf": round(seconds / duration, 4), **extra,
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
    if is_vocoder(codec):  # the shared mel, whichever vocoder would hear it
        return audio.mel_spectrogram(wav, registry.pick_device(device)).T.cpu().numpy(), None
    return latent_codec(codec, device).encode_wav(wav)


def encode_tokens(
    wav: np.ndarray, sr: int, codec: str, device: str | None = None, window: int | None = None,
    max_seconds: float | None = audio.MAX_SECONDS,
) -> tuple[np.ndarray, np.ndarray]:
    """A token codec's view of one recording: its tokens (codebooks, frames) and what they stand for,
    the summed codewords (frames, dim), for statistics and plots."""
    wav = audio.prepare_audio(wav, sr, max_seconds=max_seconds, name="input audio")
    model = token_codec(codec, device)
    tokens = model.encode_wav(wav, window)
    return tokens, model.embed(tokens)
