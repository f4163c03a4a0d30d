"""Classical speech codecs as baselines at the bitrates of the neural ones: Codec 2 (Debian `codec2`:
c2enc / c2dec, 8 kHz) and Opus (Debian `opus-tools`: opusenc / opusdec). Each round trip runs the
reference command-line tools on temporary files and returns audio at 22.05 kHz, time-aligned with
the input: Codec 2 delays its output by 15-20 ms, which STOI (unlike PESQ) would count as damage."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import audio


@dataclass(frozen=True)
class ClassicalCodec:
    name: str
    tools: tuple[str, str]
    package: str  # the Debian package that ships the tools
    bitrate: float  # nominal bits per second
    label: str

    def available(self) -> str | None:
        """None when the tools are installed, else why not (one line)."""
        missing = [tool for tool in self.tools if shutil.which(tool) is None]
        return f"{', '.join(missing)} not found: apt-get install {self.package}" if missing else None

    def roundtrip(self, wav: np.ndarray) -> tuple[np.ndarray, int]:
        """(samples,) at 22.05 kHz -> (decoded samples at 22.05 kHz, bits the encoded stream took)."""
        reason = self.available()
        if reason:
            raise ValueError(f"{self.name}: {reason}")
        with tempfile.TemporaryDirectory(prefix=f"{self.name}_") as folder:
            return self._run(np.asarray(wav, np.float32), Path(folder))

    def _run(self, wav: np.ndarray, folder: Path) -> tuple[np.ndarray, int]:
        raise NotImplementedError


def codec_delay(reference: np.ndarray, decoded: np.ndarray, sr: int, max_seconds: float = 0.05) -> int:
    """The lag (0 .. max_seconds, in samples) at which `decoded` best matches `reference`: cross-correlation."""
    n = min(len(reference), len(decoded))
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spectrum = np.fft.rfft(decoded[:n], size) * np.conj(np.fft.rfft(reference[:n], size))
    correlation = np.fft.irfft(spectrum, size)
    return int(np.argmax(correlation[: int(max_seconds * sr) + 1]))


def _call(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()[-300:]}")


@dataclass(frozen=True)
class Codec2(ClassicalCodec):
    mode: str = "700C"

    def _run(self, wav: np.ndarray, folder: Path) -> tuple[np.ndarray, int]:
        pcm = np.clip(audio.resample(wav, audio.SAMPLE_RATE, 8000) * 32767, -32768, 32767).astype("<i2")
        (folder / "in.raw").write_bytes(pcm.tobytes())
        _call(self.tools[0], self.mode, str(folder / "in.raw"), str(folder / "coded.bit"))
        _call(self.tools[1], self.mode, str(folder / "coded.bit"), str(folder / "out.raw"))
        out = np.frombuffer((folder / "out.raw").read_bytes(), dtype="<i2").astype(np.float32) / 32768
        bits = 8 * (folder / "coded.bit").stat().st_size  # whole bytes per frame: 700C's 28 bits take 32
        delay = codec_delay(audio.resample(wav, audio.SAMPLE_RATE, 8000), out, 8000)
        out = np.concatenate([out[delay:], np.zeros(delay, np.float32)])
        return audio.resample(out, 8000, audio.SAMPLE_RATE)[: len(wav)], bits


@dataclass(frozen=True)
class Opus(ClassicalCodec):
    def _run(self, wav: np.ndarray, folder: Path) -> tuple[np.ndarray, int]:
        audio.save_audio(folder / "in.wav", audio.resample(wav, audio.SAMPLE_RATE, 16000), 16000)
        _call(self.tools[0], "--quiet", "--bitrate", f"{self.bitrate / 1000:g}", str(folder / "in.wav"),
              str(folder / "coded.opus"))
        _call(self.tools[1], "--quiet", "--rate", "16000", str(folder / "coded.opus"), str(folder / "out.wav"))
        out = audio.load_audio(folder / "out.wav", audio.SAMPLE_RATE, max_seconds=None)
        bits = 8 * (folder / "coded.opus").stat().st_size  # Ogg container overhead included
        return out[: len(wav)], bits


CODECS: dict[str, ClassicalCodec] = {
    codec.name: codec for codec in (
        Codec2("codec2_700c", ("c2enc", "c2dec"), "codec2", 700.0, "Codec 2 700C (8 kHz)", mode="700C"),
        Codec2("codec2_1200", ("c2enc", "c2dec"), "codec2", 1200.0, "Codec 2 1200 (8 kHz)", mode="1200"),
        Opus("opus_6k", ("opusenc", "opusdec"), "opus-tools", 6000.0, "Opus 6 kbps (16 kHz)"),
    )
}
