"""One function per user-facing task. The studio and the CLI call these and nothing deeper.

Every function takes audio as (samples, sample_rate) arrays or a path, validates it, and
returns audio at models.audio.SAMPLE_RATE plus a dict of the settings it used.
"""

from __future__ import annotations

import random
import time
from typing import Callable, Iterator

import numpy as np
import torch

from models import audio
from models.text import check_text, split_sentences
from models.vocoder import get_vocoder

CODECS = ("vocoder",)  # plus trained latent codecs: a checkpoint name or folder (e.g. flow_vae)
LATENT_CODECS = ("flow_vae",)  # registry models with encode_wav / decode_wav
TTS_MODELS = ("sled",)  # registry models with generate(text ids, prompt latents, cfg, seed)
MAX_TTS_CHARS = 2000
MAX_REFERENCE_SECONDS = 20.0
PAUSE_SECONDS = 0.2  # silence between sentences
TTS_VOCODER_PRECISION = "bf16"  # 2x faster synthesis, same PESQ (see models.vocoder.PRECISIONS)
CFG_RANGE = (1.0, 10.0)  # 1 = no guidance; the papers' best scales are 2-3
MAX_SEED = 2**32 - 1


def check_sampling(cfg: float, seed: int | None, stop_threshold: float) -> None:
    """One clear line for a guidance scale, seed or stop threshold out of range (NaN included)."""
    low, high = CFG_RANGE
    if not (isinstance(cfg, (int, float)) and low <= cfg <= high):  # NaN fails every comparison
        raise ValueError(f"the guidance scale (cfg) must be between {low:g} and {high:g}, not {cfg}")
    if seed is not None and not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
        raise ValueError(f"the seed must be a whole number from 0 to {MAX_SEED}, not {seed}")
    if not (isinstance(stop_threshold, (int, float)) and 0.0 < stop_threshold < 1.0):
        raise ValueError(f"the stop threshold must be between 0 and 1, not {stop_threshold}")


def available_codecs() -> list[str]:
    """The vocoder plus every local codec checkpoint (for menus)."""
    return list(CODECS) + available_latent_codecs()


def available_latent_codecs() -> list[str]:
    """Every local latent codec checkpoint (for menus of what has latents to explore)."""
    from models import registry

    return [name for kind in LATENT_CODECS for name in registry.list_checkpoints(kind)]


def available_tts_models() -> list[str]:
    """Local TTS checkpoints under assets/checkpoints (for menus)."""
    from models import registry

    return [name for kind in TTS_MODELS for name in registry.list_checkpoints(kind)]


def sampling_controls() -> dict[str, dict[str, tuple]]:
    """Per TTS model kind, the extra sampling settings it declares (models/<kind>.py SAMPLING):
    tts keyword -> (label, minimum, maximum, default, step)."""
    import importlib

    return {kind: dict(getattr(importlib.import_module(f"models.{kind}"), "SAMPLING", {})) for kind in TTS_MODELS}


def checkpoint_kind(name: str) -> str | None:
    """The model kind (flow_vae, sled, ...) of a checkpoint name or folder, without loading it;
    None when there is no such checkpoint."""
    import json

    from models import registry

    try:
        folder = registry.resolve(name)
    except registry.CheckpointNotFound:
        return None
    return json.loads((folder / registry.CONFIG).read_text()).get("model")


def tts_kind(model: str) -> str:
    """The model kind (e.g. sled) of a TTS checkpoint name or folder; a clear error otherwise."""
    kind = checkpoint_kind(model)
    if kind is None:
        raise ValueError(f"unknown TTS model {model!r}: no checkpoint by that name or folder")
    if kind not in TTS_MODELS:
        raise ValueError(f"checkpoint {model!r} is a {kind} model, not a TTS model")
    return kind


def _checkpoint_model(name: str, kinds: tuple[str, ...], role: str, device: str | None,
                      builtins: tuple[str, ...] = ()):
    """The resident (model, config) behind a checkpoint name or folder whose kind is one of
    `kinds`; a clear error naming the `role` for anything else."""
    from models import registry

    try:
        model, config, _ = registry.load_model(name, device)
    except registry.CheckpointNotFound as error:
        also = f"not one of {', '.join(builtins)}, and " if builtins else ""
        raise ValueError(f"unknown {role} {name!r}: {also}{error}") from None
    if config.get("model") not in kinds:
        raise ValueError(f"checkpoint {name!r} is a {config.get('model')} model, not a {role}")
    return model, config


def _codec_model(codec: str, device: str | None):
    return _checkpoint_model(codec, LATENT_CODECS, "codec", device, CODECS)[0]


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


def tts(
    text: str, model: str = "sled", ref_wav: np.ndarray | None = None, ref_sr: int | None = None,
    ref_text: str | None = None, cfg: float = 2.0, seed: int | None = None, stream: bool = False,
    device: str | None = None, max_chars: int = MAX_TTS_CHARS, stop_threshold: float = 0.5,
    transcribe: Callable[[np.ndarray], str] | None = None, chunk_frames: tuple[int, int] = (20, 20),
) -> tuple[np.ndarray, dict] | tuple[Iterator[np.ndarray], dict]:
    """Text to speech at 22.05 kHz; returns (audio, info), or with stream=True (chunk iterator, info).

    Text is split into sentences, each generated with seed + its index and joined with a short
    pause. A reference clip (ref_wav at ref_sr) and its transcript prefix every sentence, so the
    voice continues; without ref_text, `transcribe(wav at 22.05 kHz)` supplies it. cfg is the
    guidance scale (1.0 = none, which runs the conditional model alone: the same output at half
    the cost). Streaming yields audio as frames are generated: the first chunk after
    chunk_frames[0] frames, then every chunk_frames[1]; `info` gains timings as it runs.
    """
    from models.flow_vae import ChunkedDecoder

    check_sampling(cfg, seed, stop_threshold)
    sentences = split_sentences(check_text(text, max_chars))
    generator, config = _checkpoint_model(model, TTS_MODELS, "TTS model", device)
    codec = _codec_model(config["codec"], device)
    seed = random.randrange(2**31) if seed is None else seed
    symbols = generator.frontend.symbols
    prompt_ids, prompt = [], None
    if ref_wav is not None:
        if ref_sr is None:
            raise ValueError("ref_sr: the reference audio's sample rate is required")
        ref = audio.prepare_audio(ref_wav, ref_sr, max_seconds=MAX_REFERENCE_SECONDS, name="reference audio")
        if not ref_text:
            if transcribe is None:
                raise ValueError("the reference clip needs its transcript (ref_text)")
            ref_text = transcribe(ref)
        prompt_ids = generator.frontend.encode([check_text(ref_text)])[0] + symbols.encode(" ")
        prompt = torch.from_numpy(codec.encode_wav(ref)[0])
    info = {"model": model, "codec": config["codec"], "cfg": cfg, "seed": seed, "sentences": len(sentences),
            "reference": ref_wav is not None, "ref_text": ref_text, "stop_threshold": stop_threshold,
            "vocoder_precision": TTS_VOCODER_PRECISION, "device": str(next(generator.parameters()).device)}

    def frames(index: int, sentence: str):
        ids = prompt_ids + generator.frontend.encode([sentence])[0]
        return generator.generate(ids, prompt, None if cfg == 1.0 else cfg, seed + index, stop_threshold,
                                  prompt_symbols=len(prompt_ids))

    pause = np.zeros(int(PAUSE_SECONDS * audio.SAMPLE_RATE), np.float32)
    start = time.perf_counter()
    if not stream:
        pieces, n_frames = [], 0
        for index, sentence in enumerate(sentences):
            z = list(frames(index, sentence))
            n_frames += len(z)
            if z:
                pieces += [codec.decode_wav(torch.stack(z), precision=TTS_VOCODER_PRECISION), pause]
        if not pieces:
            raise ValueError(f"{model} stopped before its first frame: no audio was generated "
                             "(try another seed, or a higher stop threshold)")
        wav = np.concatenate(pieces[:-1])
        seconds = time.perf_counter() - start
        info.update(frames=n_frames, seconds=round(len(wav) / audio.SAMPLE_RATE, 3),
                    wall_seconds=round(seconds, 3), rtf=round(seconds / max(len(wav), 1) * audio.SAMPLE_RATE, 4))
        return wav, info

    def chunks() -> Iterator[np.ndarray]:
        total, n_frames = 0, 0
        for index, sentence in enumerate(sentences):
            decoder, waiting, target = ChunkedDecoder(codec, precision=TTS_VOCODER_PRECISION), [], chunk_frames[0]
            if index:
                yield pause
                total += len(pause)
            for z in frames(index, sentence):
                waiting.append(z)
                n_frames += 1
                if len(waiting) >= target:
                    out, waiting, target = decoder.push(waiting), [], chunk_frames[1]
                    if len(out):
                        info.setdefault("first_chunk_s", round(time.perf_counter() - start, 3))
                        total += len(out)
                        yield out
            out = np.concatenate([decoder.push(waiting), decoder.flush()])
            info.setdefault("first_chunk_s", round(time.perf_counter() - start, 3))
            total += len(out)
            yield out
        seconds = time.perf_counter() - start
        info.update(frames=n_frames, seconds=round(total / audio.SAMPLE_RATE, 3), wall_seconds=round(seconds, 3),
                    rtf=round(seconds / max(total, 1) * audio.SAMPLE_RATE, 4))

    return chunks(), info
