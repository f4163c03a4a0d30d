"""Speech to speech: voice conversion, enhancement and target speaker extraction through checkpoints of
the speech-to-speech role (each serves the tasks its config lists), and semantic resynthesis through an
acoustic decoder (semantic tokens -> codec tokens -> audio), the two-stage path composed by name."""

from __future__ import annotations

import random

import numpy as np

from models import audio, registry, speech_baselines
from models.pipelines.codecs import fit_length, token_codec
from models.pipelines.common import check_controls, check_seed, checkpoint_model, declared
from models.roles import (
    ACOUSTIC_DECODER,
    SEMANTIC_TOKENIZER,
    SPEECH_TASKS,
    SPEECH_TO_SPEECH,
    AcousticPrompt,
    Control,
    SpeechRequest,
)

TASK_NAMES = {"convert": "voice-conversion", "enhance": "speech-enhancement", "extract": "target-speaker-extraction"}


SPEECH_BASELINES = tuple(speech_baselines.BASELINES)  # built in: training-free, always available


def checkpoint_tasks(name: str) -> tuple[str, ...]:
    """The tasks a speech-to-speech checkpoint (or a built-in baseline) serves: its config's `tasks`, read
    without loading it."""
    if name in speech_baselines.BASELINES:
        return speech_baselines.BASELINES[name].tasks
    config = registry.checkpoint_config(name) or {}
    return tuple(task for task in config.get("tasks", ()) if task in SPEECH_TASKS)


def available_speech_models(task: str) -> list[str]:
    """Local speech-to-speech checkpoints that serve `task`, then the built-in baselines that do (for menus)."""
    return [name for name in (*registry.checkpoints_with_role(SPEECH_TO_SPEECH), *SPEECH_BASELINES)
            if task in checkpoint_tasks(name)]


def speech_controls(model: str) -> dict[str, Control]:
    """The controls a speech-to-speech checkpoint's model (or a built-in baseline) declares: its CONTROLS."""
    if model in speech_baselines.BASELINES:
        return dict(speech_baselines.BASELINES[model].CONTROLS)
    return dict(declared(model, SPEECH_TO_SPEECH, "CONTROLS", {}))


def _backend(task: str, model: str | None, device: str | None):
    """The resident backend for a task: the named checkpoint, or the first local one that serves it;
    one clear line when none does."""
    names = [model] if model else available_speech_models(task)
    if not names:
        raise ValueError(f"no {TASK_NAMES[task]} backend is installed (train and publish one, e.g. Metis)")
    if names[0] in speech_baselines.BASELINES:
        backend = speech_baselines.baseline(names[0], registry.pick_device(device))
    else:
        backend, _ = checkpoint_model(names[0], SPEECH_TO_SPEECH, device)
    if task not in checkpoint_tasks(names[0]):
        raise ValueError(f"{names[0]} does not do {TASK_NAMES[task]} "
                         f"(it does: {', '.join(checkpoint_tasks(names[0])) or 'nothing its config lists'})")
    return backend, names[0]


def _speech_input(wav: np.ndarray, sr: int, name: str) -> np.ndarray:
    return audio.prepare_audio(wav, sr, max_seconds=audio.MAX_SECONDS, name=name)


CHUNK_SECONDS = 20.0  # a backend hears at most this much at once: a longer input is cut at its pauses
FADE_SECONDS = 0.05  # the pieces overlap by this much, cross-faded, so the joins do not click


def pause_cuts(wav: np.ndarray, sr: int, chunk_seconds: float = CHUNK_SECONDS) -> list[int]:
    """Where to cut a long input (samples), so that no piece is longer than `chunk_seconds`: each cut at the
    quietest 20 ms of the last third of its piece (a pause, where speech has one)."""
    frame, limit = int(0.02 * sr), int(chunk_seconds * sr)
    power = np.concatenate([[0.0], np.cumsum(np.asarray(wav, np.float64) ** 2)])
    cuts, start = [], 0
    while len(wav) - start > limit:
        lo, hi = start + 2 * limit // 3, start + limit - frame
        energy = power[lo + frame:hi + frame] - power[lo:hi]  # of the frame starting at each sample
        start = lo + int(np.argmin(energy)) + frame // 2
        cuts.append(start)
    return cuts


def in_chunks(transform, wav: np.ndarray, sr: int, chunk_seconds: float = CHUNK_SECONDS) -> np.ndarray:
    """`transform` (samples -> samples) over an input of any length: pieces cut at pauses, each heard with
    FADE_SECONDS / 2 of its neighbours and its output fitted to its input's length, joined by cross-fades.
    An input no longer than `chunk_seconds` goes in whole."""
    cuts = pause_cuts(wav, sr, chunk_seconds)
    if not cuts:
        return transform(wav)
    half = int(FADE_SECONDS * sr / 2)
    bounds = [0, *cuts, len(wav)]
    out = np.zeros(0, np.float32)
    for a, b in zip(bounds, bounds[1:]):
        lo, hi = max(0, a - half), min(len(wav), b + half)
        piece = fit_length(np.asarray(transform(wav[lo:hi]), np.float32), hi - lo)
        overlap = len(out) - lo  # what the previous piece already covers of this one
        ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / max(overlap, 1)
        out = np.concatenate([out[:lo], out[lo:] * (1 - ramp) + piece[:overlap] * ramp, piece[overlap:]])
    return out


def _run(task: str, source: np.ndarray, reference: np.ndarray | None, model: str | None, device: str | None,
         seed: int | None, controls: dict[str, float]) -> tuple[np.ndarray, dict]:
    backend, name = _backend(task, model, device)
    settings = check_controls(name, backend.CONTROLS, controls)
    seed = random.randrange(2**31) if seed is None else check_seed(seed)
    out = in_chunks(lambda piece: backend.transform(SpeechRequest(task, piece, reference, seed, settings)),
                    source, audio.SAMPLE_RATE)
    return out, {"model": name, "task": task, "seed": seed, **settings}


def convert(source: np.ndarray, source_sr: int, reference: np.ndarray, reference_sr: int, model: str | None = None,
            device: str | None = None, seed: int | None = None, **controls: float) -> tuple[np.ndarray, dict]:
    """Voice conversion: what `source` says, in the voice of `reference`."""
    return _run("convert", _speech_input(source, source_sr, "source audio"),
                _speech_input(reference, reference_sr, "reference audio"), model, device, seed, controls)


def enhance(noisy: np.ndarray, sr: int, model: str | None = None, device: str | None = None,
            seed: int | None = None, **controls: float) -> tuple[np.ndarray, dict]:
    """Speech enhancement: the clean speech in a noisy recording."""
    return _run("enhance", _speech_input(noisy, sr, "noisy audio"), None, model, device, seed, controls)


def extract(mixture: np.ndarray, mixture_sr: int, enrollment: np.ndarray, enrollment_sr: int,
            model: str | None = None, device: str | None = None, seed: int | None = None,
            **controls: float) -> tuple[np.ndarray, dict]:
    """Target speaker extraction: the voice of `enrollment` out of `mixture`."""
    return _run("extract", _speech_input(mixture, mixture_sr, "mixture audio"),
                _speech_input(enrollment, enrollment_sr, "enrollment audio"), model, device, seed, controls)


def available_acoustic_decoders() -> list[str]:
    """Local acoustic-decoder checkpoints (for menus)."""
    return registry.checkpoints_with_role(ACOUSTIC_DECODER)


def acoustic_decoder_controls(decoder: str) -> dict[str, Control]:
    """The controls an acoustic-decoder checkpoint's model declares."""
    return dict(declared(decoder, ACOUSTIC_DECODER, "CONTROLS", {}))


def semantic_resynthesis(wav: np.ndarray, sr: int, decoder: str, prompt: np.ndarray | None = None,
                         prompt_sr: int | None = None, device: str | None = None, seed: int | None = None,
                         **controls: float) -> tuple[np.ndarray, dict]:
    """What a semantic token stream keeps: the recording's semantic tokens (the decoder's semantic
    tokenizer), turned into codec tokens by the acoustic decoder (prompted by `prompt`'s codec tokens,
    the voice to speak in; else none) and decoded by its token codec. Returns (audio, info)."""
    wav = _speech_input(wav, sr, "input audio")
    model, _ = checkpoint_model(decoder, ACOUSTIC_DECODER, device)
    settings = check_controls(decoder, model.CONTROLS, controls)
    seed = random.randrange(2**31) if seed is None else check_seed(seed)
    tokenizer, _ = checkpoint_model(model.semantic_tokenizer, SEMANTIC_TOKENIZER, device)
    codec = token_codec(model.codec, device)
    acoustic_prompt = None
    if prompt is not None:
        if prompt_sr is None:
            raise ValueError("prompt_sr: the prompt audio's sample rate is required")
        voice = _speech_input(prompt, prompt_sr, "prompt audio")
        acoustic_prompt = AcousticPrompt(codec.encode_wav(voice), tokenizer.tokens_wav(voice))
    semantic = tokenizer.tokens_wav(wav)
    tokens = model.generate_tokens(semantic, acoustic_prompt, seed, settings)
    out = fit_length(codec.decode_tokens(tokens), len(wav))
    return out, {"decoder": decoder, "semantic_tokenizer": model.semantic_tokenizer, "codec": model.codec,
                 "semantic_tokens": int(len(semantic)), "tokens": list(tokens.shape), "seed": seed, **settings}
