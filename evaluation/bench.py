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


def hardware() -> dict:
    info = {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def bench_vocoder(path: str | os.PathLike, device: str | None = None, repeats: int = 3) -> dict:
    """Analysis-resynthesis of one recording: PESQ-wb/nb, STOI, ESTOI and RTF after a warm-up."""
    wav = audio.load_audio(path)
    vocoder = get_vocoder(device)
    out = vocoder.resynthesize(wav)  # warm-up, and the output we score
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        vocoder.resynthesize(wav)
        times.append(time.perf_counter() - start)
    seconds = len(wav) / audio.SAMPLE_RATE
    return {
        "input": Path(path).name, "seconds": round(seconds, 3), "device": str(vocoder.device),
        "pesq_wb": round(pesq_score(wav, out, audio.SAMPLE_RATE, "wb"), 3),
        "pesq_nb": round(pesq_score(wav, out, audio.SAMPLE_RATE, "nb"), 3),
        "stoi": round(stoi_score(wav, out, audio.SAMPLE_RATE), 4),
        "estoi": round(stoi_score(wav, out, audio.SAMPLE_RATE, extended=True), 4),
        "rtf": round(min(times) / seconds, 4), "hardware": hardware(),
    }


def write_json(result: dict, out: str | os.PathLike | None) -> str:
    text = json.dumps(result, indent=2)
    if out:
        write_text_atomic(out, text + "\n")
    return text
