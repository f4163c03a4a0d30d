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

from models import audio, registry
from models.roles import LATENT_CODEC, SPEECH_TO_SPEECH, TOKEN_CODEC, TTS, Control, TTSRequest
from models.text import check_text, split_sentences
from models.vocoder import get_vocoder

CODECS = ("vocoder",)  # built in; trained codecs are checkpoints of the latent-codec role
MAX_TTS_CHARS = 2000
MAX_REFERENCE_SECONDS = 20.0
PAUSE_SECONDS = 0.2  # silence between sentences
TTS_VOCODER_PRECISION = "bf16"  # 2x faster synthesis, same PESQ (see models.vocoder.PRECISIONS)
CFG_RANGE = (1.0, 10.0)  # 1 = no guidance; the papers' best scales are 2-3
MAX_SEED = 2**32 - 1
ROLE_NAMES = {LATENT_CODEC: "codec", TOKEN_CODEC: "token codec", TTS: "TTS model",
              SPEECH_TO_SPEECH: "speech-to-speech model"}


def check_sampling(cfg: float, seed: int | None) -> None:
    """One clear line for a guidance scale or seed out of range (NaN included)."""
    low, high = CFG_RANGE
    if not (isinstance(cfg, (int, float)) and low <= cfg <= high):  # NaN fails every comparison
        raise ValueError(f"the guidance scale (cfg) must be between {low:g} and {high:g}, not {cfg}")
    if seed is not None and not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
        raise ValueError(f"the seed must be a whole number from 0 to {MAX_SEED}, not {seed}")


def available_codecs() -> list[str]:
    """The vocoder plus every local codec checkpoint (for menus)."""
    return list(CODECS) + available_latent_codecs()


def available_latent_codecs() -> list[str]:
    """Every local latent codec checkpoint (for menus of what has latents to explore)."""
    return registry.checkpoints_with_role(LATENT_CODEC)


def available_tts_models() -> list[str]:
    """Local TTS checkpoints under assets/checkpoints (for menus)."""
    return registry.checkpoints_with_role(TTS)


def tts_controls(model: str) -> dict[str, Control]:
    """The sampling controls a TTS checkpoint's model declares (its class's CONTROLS)."""
    return dict(getattr(registry.model_class(tts_kind(model)), "CONTROLS", {}))


def all_tts_controls() -> dict[str, Control]:
    """Every control any local TTS checkpoint declares, by name (one slider each in a menu)."""
    controls: dict[str, Control] = {}
    for name in available_tts_models():
        controls.update(tts_controls(name))
    return controls


def tts_kind(model: str) -> str:
    """The model kind (e.g. sled) of a TTS checkpoint name or folder; a clear error otherwise."""
    _require_role(model, TTS)
    return registry.checkpoint_kind(model)


def _require_role(name: str, role: str, builtins: tuple[str, ...] = ()) -> None:
    kind = registry.checkpoint_kind(name)
    if kind is None:
        also = f"not one of {', '.join(builtins)}, and " if builtins else ""
        raise ValueError(f"unknown {ROLE_NAMES[role]} {name!r}: {also}no checkpoint by that name or folder")
    if registry.checkpoint_role(name) != role:
        raise ValueError(f"checkpoint {name!r} is a {kind} model, not a {ROLE_NAMES[role]}")


def _checkpoint_model(name: str, role: str, device: str | None, builtins: tuple[str, ...] = ()):
    """The resident (model, config) behind a checkpoint name or folder of `role`; one clear line
    naming the role for anything else."""
    _require_role(name, role, builtins)
    model, config, _ = registry.load_model(name, device)
    return model, config


def _codec_model(codec: str, device: str | None):
    return _checkpoint_model(codec, LATENT_CODEC, device, CODECS)[0]


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
    device: str | None = None, max_chars: int = MAX_TTS_CHARS,
    transcribe: Callable[[np.ndarray], str] | None = None, chunk_frames: tuple[int, int] = (20, 20),
    **controls: float,
) -> tuple[np.ndarray, dict] | tuple[Iterator[np.ndarray], dict]:
    """Text to speech at 22.05 kHz with any checkpoint of the TTS role; returns (audio, info), or
    with stream=True (chunk iterator, info).

    Text is split into sentences, each generated with seed + its index and joined with a short
    pause. A reference clip (ref_wav at ref_sr) and its transcript prefix every sentence, so the
    voice continues; without ref_text, `transcribe(wav at 22.05 kHz)` supplies it. cfg is the
    guidance scale (1.0 = none, which runs the conditional model alone: the same output at half
    the cost); `controls` are the model's own sampling settings (its CONTROLS, e.g. SLED's
    stop_threshold), each checked against its range. Streaming yields audio as frames are
    generated: the first chunk after chunk_frames[0] frames, then every chunk_frames[1]; `info`
    gains timings as it runs.
    """
    check_sampling(cfg, seed)
    sentences = split_sentences(check_text(text, max_chars))
    generator, config = _checkpoint_model(model, TTS, device)
    declared = getattr(generator, "CONTROLS", {})
    unknown = sorted(set(controls) - set(declared))
    if unknown:
        raise ValueError(f"{model} has no setting {unknown[0]!r} (its settings: {', '.join(declared) or 'none'})")
    settings = {name: control.check(name, controls.get(name, control.default)) for name, control in declared.items()}
    codec = _codec_model(generator.codec, device)
    seed = random.randrange(2**31) if seed is None else seed
    prompt, prompt_text, ref = None, None, None
    if ref_wav is not None:
        if ref_sr is None:
            raise ValueError("ref_sr: the reference audio's sample rate is required")
        ref = audio.prepare_audio(ref_wav, ref_sr, max_seconds=MAX_REFERENCE_SECONDS, name="reference audio")
        if not ref_text:
            if transcribe is None:
                raise ValueError("the reference clip needs its transcript (ref_text)")
            ref_text = transcribe(ref)
        prompt_text = check_text(ref_text)
        prompt = torch.from_numpy(codec.encode_wav(ref)[0])
    info = {"model": model, "codec": generator.codec, "cfg": cfg, "seed": seed, "sentences": len(sentences),
            "reference": ref_wav is not None, "ref_text": ref_text, **settings,
            "vocoder_precision": TTS_VOCODER_PRECISION, "device": str(next(generator.parameters()).device)}

    def frames(index: int, sentence: str):
        return generator.frames(TTSRequest(sentence, prompt, prompt_text, None if cfg == 1.0 else cfg, seed + index,
                                           settings, reference=ref))

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
            raise ValueError(f"{model} stopped before its first frame: no audio was generated (try another seed)")
        wav = np.concatenate(pieces[:-1])
        seconds = time.perf_counter() - start
        info.update(frames=n_frames, seconds=round(len(wav) / audio.SAMPLE_RATE, 3),
                    wall_seconds=round(seconds, 3), rtf=round(seconds / max(len(wav), 1) * audio.SAMPLE_RATE, 4))
        return wav, info

    def chunks() -> Iterator[np.ndarray]:
        total, n_frames = 0, 0
        for index, sentence in enumerate(sentences):
            decoder, waiting, target = codec.streaming_decoder(TTS_VOCODER_PRECISION), [], chunk_frames[0]
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


# --------------------------------------------------------------- speech to speech


TASK_NAMES = {"convert": "voice-conversion", "enhance": "speech-enhancement", "extract": "target-speaker-extraction"}


def _speech_to_speech(task: str, model: str | None, device: str | None):
    """The resident model for a speech-to-speech task: the named checkpoint, or the first local one
    that does the task; one clear line when none does."""
    def does(name: str) -> bool:
        return task in getattr(registry.model_class(registry.checkpoint_kind(name)), "TASKS", ())

    names = [model] if model else [name for name in registry.checkpoints_with_role(SPEECH_TO_SPEECH) if does(name)]
    if not names:
        raise ValueError(f"no {TASK_NAMES[task]} backend is installed (train and publish one, e.g. Metis)")
    backend, _ = _checkpoint_model(names[0], SPEECH_TO_SPEECH, device)
    if task not in backend.TASKS:
        raise ValueError(f"{names[0]} does not do {TASK_NAMES[task]} (it does: {', '.join(backend.TASKS)})")
    return backend, names[0]


def _speech_input(wav: np.ndarray, sr: int, name: str) -> np.ndarray:
    return audio.prepare_audio(wav, sr, max_seconds=audio.MAX_SECONDS, name=name)


def convert(source: np.ndarray, source_sr: int, reference: np.ndarray, reference_sr: int, model: str | None = None,
            device: str | None = None) -> tuple[np.ndarray, dict]:
    """Voice conversion: what `source` says, in the voice of `reference`."""
    backend, name = _speech_to_speech("convert", model, device)
    out = backend.convert(_speech_input(source, source_sr, "source audio"),
                          _speech_input(reference, reference_sr, "reference audio"))
    return out, {"model": name, "task": "convert"}


def enhance(noisy: np.ndarray, sr: int, model: str | None = None, device: str | None = None) -> tuple[np.ndarray, dict]:
    """Speech enhancement: the clean speech in a noisy recording."""
    backend, name = _speech_to_speech("enhance", model, device)
    return backend.enhance(_speech_input(noisy, sr, "noisy audio")), {"model": name, "task": "enhance"}


def extract(mixture: np.ndarray, mixture_sr: int, enrollment: np.ndarray, enrollment_sr: int,
            model: str | None = None, device: str | None = None) -> tuple[np.ndarray, dict]:
    """Target speaker extraction: the voice of `enrollment` out of `mixture`."""
    backend, name = _speech_to_speech("extract", model, device)
    out = backend.extract(_speech_input(mixture, mixture_sr, "mixture audio"),
                          _speech_input(enrollment, enrollment_sr, "enrollment audio"))
    return out, {"model": name, "task": "extract"}
