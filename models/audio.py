"""Audio I/O and the mel front-end every model shares.

All generation happens at SAMPLE_RATE (22.05 kHz) because the shared vocoder, the
universal HiFi-GAN V1, was trained there; `MelSpectrogram` reproduces that vocoder's
training features exactly, so any model that predicts this mel gets a waveform for free.
Every loader validates what it reads and raises `AudioError` (a ValueError) naming the
problem, so the studio and the CLI can show it to the user as it is.
"""

from __future__ import annotations

import os
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from models.files import atomic_path

SAMPLE_RATE = 22050
MAX_SECONDS = 60.0  # default limit for user-supplied audio; every loader takes its own
SILENCE_PEAK = 1e-3  # -60 dBFS: a clip whose loudest sample is below this is silence


class AudioError(ValueError):
    """Audio that cannot be used, with a message that says why."""


# --------------------------------------------------------------------------- I/O


def load_audio(
    path: str | os.PathLike,
    sr: int = SAMPLE_RATE,
    *,
    max_seconds: float | None = MAX_SECONDS,
) -> np.ndarray:
    """Read wav/flac/ogg/mp3 as mono float32 at `sr`, validated (see `check_audio`)."""
    path = Path(path)
    if path.is_dir():
        raise AudioError(f"{path.name} is a folder, not an audio file")
    if not path.is_file():
        raise AudioError(f"Audio file not found: {path.name}")
    if path.stat().st_size == 0:
        raise AudioError(f"{path.name} is empty (0 bytes)")
    try:
        header = sf.info(path)
    except RuntimeError:  # not a format soundfile knows (LibsndfileError); librosa gets its turn below
        header = None
    if header is not None and max_seconds is not None and header.duration > max_seconds:  # before decoding
        raise AudioError(f"{path.name} is {header.duration:.1f} s long; the limit is {max_seconds:.0f} s")
    try:
        wav, native_sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as sf_error:  # soundfile lacks some codecs; librosa tries audioread
        try:
            import warnings

            import librosa

            with warnings.catch_warnings():  # its fallback chatter; failure is reported below
                warnings.simplefilter("ignore")
                wav, native_sr = librosa.load(path, sr=None, mono=False)
            wav = np.atleast_2d(wav).T  # librosa gives (channels, time)
        except Exception as error:
            reason = str(sf_error).replace(f"Error opening {str(path)!r}: ", "").replace(str(path), path.name)
            raise AudioError(f"Could not read audio file {path.name}: {reason}") from error
    promised = _wav_header_frames(path)
    if promised is not None and len(wav) < promised - native_sr // 100:
        raise AudioError(f"{path.name} is truncated: its header promises {promised / native_sr:.2f} s, the file "
                         f"holds {len(wav) / native_sr:.2f} s")
    wav = to_mono(wav)
    check_audio(wav, native_sr, max_seconds=max_seconds, name=path.name)
    return resample(wav, native_sr, sr)


def _wav_header_frames(path: Path) -> int | None:
    """The frame count a PCM WAV header declares (libsndfile silently reads what is there), or None
    when there is no such header or it declares an unknown length (0 or the streaming maximum)."""
    try:
        with wave.open(str(path), "rb") as reader:
            frames, width = reader.getnframes(), reader.getsampwidth() * reader.getnchannels()
    except (wave.Error, EOFError, OSError):
        return None
    return frames if 0 < frames * width < 0xFFFFFFF0 else None


def save_audio(path: str | os.PathLike, wav: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    """Write audio atomically: a temp file in the same folder, then a rename."""
    path = Path(path)
    wav = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"Unsupported output format '{path.suffix}' (use .wav, .flac or .ogg)")
    with atomic_path(path) as tmp:
        sf.write(tmp, wav, sr, format=fmt, subtype="VORBIS" if fmt == "OGG" else "PCM_16")
    return path


# ---------------------------------------------------------------- conversions


def to_float32(wav: np.ndarray) -> np.ndarray:
    """PCM integers (as Gradio and many files deliver them) to float32 in [-1, 1]."""
    wav = np.asarray(wav)
    if np.issubdtype(wav.dtype, np.integer):
        info = np.iinfo(wav.dtype)
        offset = (info.max + 1) // 2 if info.min == 0 else 0  # unsigned PCM is centred
        return ((wav.astype(np.float64) - offset) / (info.max - offset + 1)).astype(np.float32)
    return wav.astype(np.float32, copy=False)


def to_mono(wav: np.ndarray) -> np.ndarray:
    """(time,) or (time, channels), as soundfile and Gradio deliver audio, to (time,)."""
    wav = to_float32(wav)
    if wav.ndim == 2:
        wav = wav.mean(axis=1) if wav.shape[0] else wav[:, 0]
    if wav.ndim != 1:
        raise AudioError(f"Expected mono or multichannel audio, got an array of shape {wav.shape}")
    return np.ascontiguousarray(wav, dtype=np.float32)


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return wav.astype(np.float32, copy=False)
    return soxr.resample(wav, sr_in, sr_out, quality="HQ").astype(np.float32)


def prepare_audio(
    wav: np.ndarray, sr_in: int, sr: int = SAMPLE_RATE, *, max_seconds: float | None = MAX_SECONDS,
    name: str = "audio",
) -> np.ndarray:
    """In-memory counterpart of `load_audio`: any PCM/float array to validated mono at `sr`."""
    wav = to_mono(wav)
    check_audio(wav, sr_in, max_seconds=max_seconds, name=name)
    return resample(wav, sr_in, sr)


def check_audio(
    wav: np.ndarray, sr: int, *, max_seconds: float | None = MAX_SECONDS, name: str = "audio"
) -> np.ndarray:
    """Raise AudioError for empty, non-finite, silent or over-long audio; else return it."""
    if sr <= 0:
        raise AudioError(f"{name}: invalid sample rate {sr}")
    if wav.size == 0:
        raise AudioError(f"{name} is empty (no samples)")
    if not np.all(np.isfinite(wav)):
        raise AudioError(f"{name} contains NaN or infinite samples")
    seconds = wav.shape[0] / sr
    if max_seconds is not None and seconds > max_seconds:
        raise AudioError(f"{name} is {seconds:.1f} s long; the limit is {max_seconds:.0f} s")
    if np.max(np.abs(wav)) < SILENCE_PEAK:
        raise AudioError(f"{name} is silent (peak below -60 dBFS)")
    return wav


# ------------------------------------------------------------ level and trim


def normalize_peak(wav: np.ndarray, peak: float = 0.95) -> np.ndarray:
    top = float(np.max(np.abs(wav))) if wav.size else 0.0
    return wav if top == 0.0 else (wav * (peak / top)).astype(np.float32)


CORPUS_LUFS = -23.0  # the loudness every corpus clip is levelled to


def normalize_loudness(wav: np.ndarray, sr: int, target_lufs: float = CORPUS_LUFS) -> np.ndarray:
    """Gain to an integrated loudness (ITU-R BS.1770), never clipping past 0.99 peak.

    Clips shorter than one 400 ms gating block have no BS.1770 loudness; their RMS level
    stands in for it.
    """
    import pyloudnorm

    if wav.shape[0] >= int(0.4 * sr):
        loudness = pyloudnorm.Meter(sr).integrated_loudness(wav.astype(np.float64))
    else:
        loudness = 20 * np.log10(np.sqrt(np.mean(wav.astype(np.float64) ** 2)) + 1e-12)
    if not np.isfinite(loudness):  # gated out entirely: nothing audible to scale
        return wav
    out = wav * (10 ** ((target_lufs - loudness) / 20))
    top = np.max(np.abs(out))
    return (out * (0.99 / top) if top > 0.99 else out).astype(np.float32)


def trim_silence(wav: np.ndarray, sr: int, top_db: float = 40.0, pad_seconds: float = 0.05,
                 fill: bool = False, window: int = 1024) -> np.ndarray:
    """Cut leading and trailing audio quieter than `top_db` below the loudest moment (power over a sliding
    `window`), keeping a pad; with `fill`, an end whose margin is shorter than the pad is lengthened to it
    with silence. The window slides by one sample, so a finished clip finishes again to itself."""
    if np.ndim(wav) != 1:
        raise ValueError(f"trim_silence takes mono audio (one dimension), not shape {np.shape(wav)}")
    x = np.pad(np.asarray(wav, dtype=np.float64), window)  # speech at the very edge is measured as elsewhere
    half = window // 2
    total = np.concatenate([[0.0], np.cumsum(np.pad(x * x, (half, window - half)))])
    power = (total[window:] - total[:-window])[: len(x)] / window  # centred on each sample
    if not len(wav) or power.max() <= 0:
        return wav  # silence: nothing to find, nothing to add
    loud = np.flatnonzero(power >= power.max() * 10 ** (-top_db / 10))
    start, end = int(loud[0]) - window, int(loud[-1]) + 1 - window
    pad = int(pad_seconds * sr)
    out = wav[max(0, start - pad) : max(0, min(len(wav), end + pad))]
    if not fill:
        return out
    return np.pad(out, (max(0, pad - start), max(0, end + pad - len(wav))))


# Version of the corpus clips' finishing rule (like_corpus); a corpus made under another is refinished.
FINISH = "margins-0.1s"


def like_corpus(wav: np.ndarray, sr: int) -> np.ndarray:
    """A clip made the way every corpus clip is: 0.1 s of margin before and after the speech (longer
    silence cut, shorter filled: engines that start speaking at the first sample would otherwise teach the
    generators abrupt onsets), loudness at CORPUS_LUFS. The codecs saw no other level in training, so a
    voice prompt is prepared the same way."""
    return normalize_loudness(trim_silence(wav, sr, top_db=40.0, pad_seconds=0.1, fill=True), sr, CORPUS_LUFS)


def pause_cut(wav: np.ndarray, sr: int, max_seconds: float, quiet_db: float = 35.0, min_pause: float = 0.15,
              frame_seconds: float = 0.02) -> int:
    """Where to cut audio longer than max_seconds: the middle of the last pause (a run of at least
    `min_pause` of frames `quiet_db` below the loudest frame) that starts before the limit, past
    half of it; with none, the quietest frame in the limit's second half. Returns a sample index."""
    limit = int(max_seconds * sr)
    if len(wav) <= limit:
        return len(wav)
    hop = max(1, int(frame_seconds * sr))
    frames = len(wav[:limit]) // hop
    energy = 10 * np.log10(np.mean(wav[: frames * hop].reshape(frames, hop) ** 2, axis=1) + 1e-12)
    quiet = energy < energy.max() - quiet_db
    need = max(1, int(round(min_pause / frame_seconds)))
    best, run = None, 0
    for i, q in enumerate(quiet):
        run = run + 1 if q else 0
        if run >= need and (i - run + 1) * hop >= limit // 2:
            best = i - run // 2  # the middle of the pause so far: silence on both sides of the cut
    if best is None:
        half = frames // 2
        best = half + int(np.argmin(energy[half:]))
    return int(best * hop)


# ------------------------------------------------------------------ mel front-end


@dataclass(frozen=True)
class MelConfig:
    """The universal HiFi-GAN V1 feature setup (its config.json); change none of it."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float = 8000.0
    clamp: float = 1e-5

    def to_dict(self) -> dict:
        return asdict(self)


class MelSpectrogram(torch.nn.Module):
    """Natural-log magnitude mel, as HiFi-GAN computes it.

    The signal is reflect-padded by (n_fft - hop) / 2 on both sides and framed without
    centring, so `frames == samples // hop` and the vocoder returns `frames * hop` samples
    aligned with the input's start.
    """

    def __init__(self, config: MelConfig = MelConfig()):
        super().__init__()
        import librosa

        self.config = config
        basis = librosa.filters.mel(
            sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
            fmin=config.fmin, fmax=config.fmax,
        )  # Slaney scale and norm, librosa's defaults, as in the vocoder's training
        self.register_buffer("mel_basis", torch.from_numpy(basis).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(config.win_length), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """(batch, samples) or (samples,) -> (batch, n_mels, frames) or (n_mels, frames)."""
        squeeze = wav.dim() == 1
        wav = wav.unsqueeze(0) if squeeze else wav
        c = self.config
        pad = (c.n_fft - c.hop_length) // 2
        if wav.shape[-1] <= pad:
            raise AudioError(f"audio is too short for a mel frame ({wav.shape[-1]} samples)")
        wav = torch.nn.functional.pad(wav.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            wav, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=self.window,
            center=False, return_complex=True,
        )
        magnitude = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + 1e-9)
        mel = torch.log(torch.clamp(self.mel_basis @ magnitude, min=c.clamp))
        return mel.squeeze(0) if squeeze else mel


_MEL_CACHE: dict[str, MelSpectrogram] = {}


def mel_spectrogram(wav: np.ndarray | torch.Tensor, device: str | torch.device = "cpu",
                    grad: bool = False) -> torch.Tensor:
    """Mel of a 22.05 kHz waveform with a cached front-end per device; with `grad`, differentiable (a loss on
    a generated waveform's mel)."""
    key = str(device)
    if key not in _MEL_CACHE:
        _MEL_CACHE[key] = MelSpectrogram().to(device)
    wav = torch.as_tensor(wav, dtype=torch.float32, device=device)
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        return _MEL_CACHE[key](wav)
