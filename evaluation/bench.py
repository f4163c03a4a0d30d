"""Speed and quality benchmarks that print JSON (`speech-studio bench ...`)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from evaluation.metrics import pesq_score, stoi_score
from models import audio
from models.files import write_text_atomic
from models.vocoder import get_vocoder

BENCH_TEXT = "A quiet morning on the lake gives the best light for painting the far hills."


def hardware() -> dict:
    info = {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def bench_vocoder(path: str | os.PathLike, device: str | None = None, repeats: int = 3,
                  precision: str = "fp32") -> dict:
    """Analysis-resynthesis of one recording: PESQ-wb/nb, STOI, ESTOI and RTF after a warm-up."""
    wav = audio.load_audio(path)
    vocoder = get_vocoder(device, precision)
    out = vocoder.resynthesize(wav)  # warm-up, and the output we score
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        vocoder.resynthesize(wav)
        times.append(time.perf_counter() - start)
    seconds = len(wav) / audio.SAMPLE_RATE
    return {
        "input": Path(path).name, "seconds": round(seconds, 3), "device": str(vocoder.device), "precision": precision,
        "pesq_wb": round(pesq_score(wav, out, audio.SAMPLE_RATE, "wb"), 3),
        "pesq_nb": round(pesq_score(wav, out, audio.SAMPLE_RATE, "nb"), 3),
        "stoi": round(stoi_score(wav, out, audio.SAMPLE_RATE), 4),
        "estoi": round(stoi_score(wav, out, audio.SAMPLE_RATE, extended=True), 4),
        "rtf": round(min(times) / seconds, 4), "hardware": hardware(),
    }


def bench_tts(model: str = "sled", text: str = BENCH_TEXT, device: str | None = None, cfg: float = 2.0,
              seed: int = 0, repeats: int = 3, chunk_frames: tuple[int, int] = (20, 20)) -> dict:
    """TTS speed after a warm-up: offline RTF (generation + decoding), and streaming latency.

    RTF = wall time / audio duration, best of `repeats`. first_chunk_s is the time from the
    streaming call to its first non-empty audio chunk; stream_rtf covers the whole stream.
    """
    from models import pipelines

    def speak(stream: bool):
        start = time.perf_counter()
        result, info = pipelines.tts(text, model, cfg=cfg, seed=seed, device=device, stream=stream,
                                     chunk_frames=chunk_frames)
        if not stream:
            return time.perf_counter() - start, None, len(result), info
        first, samples = None, 0
        for chunk in result:
            if first is None and len(chunk):
                first = time.perf_counter() - start
            samples += len(chunk)
        return time.perf_counter() - start, first, samples, info

    speak(False)  # warm-up: loads the model and codec, first-call allocations
    offline = [speak(False) for _ in range(repeats)]
    streamed = [speak(True) for _ in range(repeats)]
    wall, _, samples, info = min(offline, key=lambda run: run[0])
    if not samples or any(run[1] is None for run in streamed):
        raise ValueError(f"{model} produced no audio for {text!r}")
    seconds = samples / audio.SAMPLE_RATE
    return {
        "model": model, "text": text, "cfg": cfg, "seed": seed, "device": info["device"], "repeats": repeats,
        "audio_seconds": round(seconds, 3), "frames": info["frames"],
        "rtf": round(wall / seconds, 4),
        "first_chunk_s": round(min(s[1] for s in streamed), 4),
        "stream_rtf": round(min(s[0] / (s[2] / audio.SAMPLE_RATE) for s in streamed), 4),
        "chunk_frames": list(chunk_frames), "hardware": hardware(),
    }


def write_json(result: dict, out: str | os.PathLike | None) -> str:
    text = json.dumps(result, indent=2)
    if out:
        write_text_atomic(out, text + "\n")
    return text
