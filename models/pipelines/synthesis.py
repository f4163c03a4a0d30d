"""Text to speech with any checkpoint of the TTS role: what each declares (controls, capabilities), the
voice prompt cut to size, and synthesis offline or streamed."""

from __future__ import annotations

import contextlib
import random
import time
from typing import Callable, Iterator

import numpy as np

from models import audio, registry
from models.pipelines.common import (
    TTS_VOCODER_PRECISION,
    TTT_LR,
    check_controls,
    check_sampling,
    checkpoint_model,
    declared,
    require_role,
    turn,
)
from models.pipelines.fitted_voices import fit_voice
from models.roles import STREAMING, TEST_TIME_TRAINING, TTS, Control, Scorers, TTSRequest, with_defaults
from models.text import check_text, split_sentences, transcript_prefix
from models.vocoder import check_vocoder, current_vocoder, use_vocoder

MAX_TTS_CHARS = 2000
MAX_REFERENCE_SECONDS = 20.0  # a voice prompt longer than this is cut at a pause (cut_reference)
MAX_REFERENCE_UPLOAD_SECONDS = 600.0
PAUSE_SECONDS = 0.2  # silence between sentences


def available_tts_models() -> list[str]:
    """Local TTS checkpoints under assets/checkpoints (for menus)."""
    return registry.checkpoints_with_role(TTS)


def tts_kind(model: str) -> str:
    """The model kind (e.g. sled) of a TTS checkpoint name or folder; a clear error otherwise."""
    require_role(model, TTS)
    return registry.checkpoint_kind(model)


def tts_controls(model: str) -> dict[str, Control]:
    """The sampling controls a TTS checkpoint offers: its class's CONTROLS, at the defaults its own config
    sets where the class derives some from it (`control_defaults`)."""
    controls = dict(declared(model, TTS, "CONTROLS", {}))
    derive = declared(model, TTS, "control_defaults", None)
    return with_defaults(controls, derive(registry.checkpoint_config(model))) if derive else controls


def tts_capabilities(model: str) -> frozenset[str]:
    """What a TTS checkpoint's model declares it can do beyond speaking (models.roles.CAPABILITIES)."""
    return frozenset(declared(model, TTS, "CAPABILITIES", frozenset()))


def all_tts_controls() -> dict[str, Control]:
    """Every control any local TTS checkpoint declares, by name (one slider each in a menu)."""
    controls: dict[str, Control] = {}
    for name in available_tts_models():
        controls.update(tts_controls(name))
    return controls


def fits_voices(model: str) -> bool:
    """Whether a TTS checkpoint's model offers test-time training on a reference."""
    return TEST_TIME_TRAINING in tts_capabilities(model)


def cut_reference(ref: np.ndarray, ref_text: str | None, transcribe: Callable[[np.ndarray], str] | None,
                  max_seconds: float = MAX_REFERENCE_SECONDS) -> tuple[np.ndarray, str, dict | None]:
    """A voice prompt no longer than max_seconds (22.05 kHz audio): a longer clip is cut at a pause
    (audio.pause_cut), and its transcript kept in step: a given one is cut to the words the ASR hears
    in the kept audio (text.transcript_prefix), else the kept audio is transcribed. Returns (audio,
    transcript, what was cut or None)."""
    end = audio.pause_cut(ref, audio.SAMPLE_RATE, max_seconds)
    if end >= len(ref):
        if not ref_text:
            if transcribe is None:
                raise ValueError("the reference clip needs its transcript (ref_text)")
            ref_text = transcribe(ref)
        return ref, ref_text, None
    kept = ref[:end]
    if transcribe is None:
        raise ValueError(f"the reference clip is {len(ref) / audio.SAMPLE_RATE:.1f} s long; cutting it to "
                         f"{max_seconds:.0f} s needs an ASR to keep its transcript in step")
    heard = transcribe(kept)
    text = transcript_prefix(ref_text, heard) if ref_text else heard
    if not text.strip():
        raise ValueError("no words were heard in the first part of the reference clip: upload a shorter clip")
    return kept, text, {"original_seconds": round(len(ref) / audio.SAMPLE_RATE, 2),
                        "kept_seconds": round(end / audio.SAMPLE_RATE, 2), "transcript_given": bool(ref_text)}


def prepare_reference(ref_wav: np.ndarray, ref_sr: int | None, ref_text: str | None,
                      transcribe: Callable[[np.ndarray], str] | None, level: bool = True,
                      ) -> tuple[np.ndarray, str, dict | None]:
    """An uploaded voice prompt checked, at 22.05 kHz, cut to size with its transcript (cut_reference), and
    with `level` made like the corpus's clips (trimmed and levelled, audio.like_corpus): the generators'
    codec never heard another level. Returns (audio, transcript, what was cut or None)."""
    if ref_sr is None:
        raise ValueError("ref_sr: the reference audio's sample rate is required")
    ref = audio.prepare_audio(ref_wav, ref_sr, max_seconds=MAX_REFERENCE_UPLOAD_SECONDS, name="reference audio")
    ref, ref_text, cut = cut_reference(ref, ref_text, transcribe)
    return (audio.like_corpus(ref, audio.SAMPLE_RATE) if level else ref), ref_text, cut


def tts(
    text: str, model: str = "sled", ref_wav: np.ndarray | None = None, ref_sr: int | None = None,
    ref_text: str | None = None, cfg: float = 2.0, seed: int | None = None, stream: bool = False,
    device: str | None = None, max_chars: int = MAX_TTS_CHARS,
    transcribe: Callable[[np.ndarray], str] | None = None, chunk_frames: tuple[int, int] = (20, 20),
    ttt_samples: int = 0, ttt_progress: Callable[[int, int], None] | None = None, ttt_lr: float = TTT_LR,
    owner: str = "", scorers: Scorers | None = None, vocoder: str | None = None, level_reference: bool = True,
    **controls: float,
) -> tuple[np.ndarray, dict] | tuple[Iterator[np.ndarray], dict]:
    """Text to speech at 22.05 kHz with any checkpoint of the TTS role; returns (audio, info), or
    with stream=True (chunk iterator, info).

    Text is split into sentences, each generated with seed + its index and joined with a short
    pause. A reference clip (ref_wav at ref_sr) and its transcript prefix every sentence, so the
    voice continues; without ref_text, `transcribe(wav at 22.05 kHz)` supplies it. With level_reference
    the clip is first trimmed and levelled as the training corpus was (audio.like_corpus). cfg is the
    guidance scale (1.0 = none, which runs the conditional model alone: the same output at half
    the cost); `controls` are the model's own sampling settings (its CONTROLS, e.g. SLED's
    stop_threshold), each checked against its range. Streaming yields audio as a STREAMING backend
    generates frames: the first chunk after chunk_frames[0] frames (or the decoder's lag, when longer),
    then every chunk_frames[1] (another backend yields each sentence whole); `info` gains timings as it
    runs. With ttt_samples > 0 and a reference, a backend that declares TEST_TIME_TRAINING is first
    fitted to the reference's voice (`fit_voice` at learning rate ttt_lr, checked with `scorers`, cached per
    reference and owner). `vocoder` names the mel vocoder of a backend that ends in one (None: the one chosen
    for this thread, models.vocoder.current_vocoder).
    """
    seed = check_sampling(cfg, seed)
    vocoder = check_vocoder(vocoder or current_vocoder())
    sentences = split_sentences(check_text(text, max_chars))
    backend, _ = checkpoint_model(model, TTS, device)
    settings = check_controls(model, tts_controls(model), controls)
    seed = random.randrange(2**31) if seed is None else seed
    ref = prompt = prompt_text = None
    if ref_wav is not None:
        ref, ref_text, cut = prepare_reference(ref_wav, ref_sr, ref_text, transcribe, level_reference)
        prompt_text = check_text(ref_text)
        prompt = backend.encode_prompt(ref)
    info = {"model": model, "codec": backend.codec, "cfg": cfg, "seed": seed, "sentences": len(sentences),
            "reference": ref is not None, "ref_text": ref_text,
            "reference_levelled": ref is not None and level_reference, **settings,
            "vocoder": vocoder, "vocoder_precision": TTS_VOCODER_PRECISION,
            "device": str(next(backend.parameters()).device)}
    if ref is not None:
        info["reference_cut"] = cut
    delta = None
    if ttt_samples:
        if ref is None:
            raise ValueError("test-time training needs a reference clip and its transcript")
        with use_vocoder(vocoder):  # the fit's check listens through the request's vocoder
            delta, info["ttt"] = fit_voice(model, ref, prompt_text, ttt_samples, device, ttt_progress, ttt_lr,
                                           owner, scorers)
    requests = [TTSRequest(sentence, prompt, prompt_text, None if cfg == 1.0 else cfg, seed + index, settings,
                           reference=ref) for index, sentence in enumerate(sentences)]

    @contextlib.contextmanager
    def voice():
        with turn(backend) or contextlib.nullcontext(), backend.adapted(delta) if delta else contextlib.nullcontext():
            yield

    if stream:
        return _with_vocoder(_streamed(backend, requests, voice, chunk_frames, info), vocoder), info
    with use_vocoder(vocoder):
        return _offline(backend, model, requests, voice, info), info


def _with_vocoder(chunks: Iterator[np.ndarray], vocoder: str) -> Iterator[np.ndarray]:
    """The chunks, each made with `vocoder` chosen (and the caller's choice restored between them)."""
    try:
        while True:
            with use_vocoder(vocoder):
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk
    finally:  # a listener who stops early releases the backend's turn now, not at garbage collection
        chunks.close()


def _pause() -> np.ndarray:
    return np.zeros(int(PAUSE_SECONDS * audio.SAMPLE_RATE), np.float32)


def _timed(info: dict, start: float, samples: int) -> None:
    seconds = time.perf_counter() - start
    info.update(seconds=round(samples / audio.SAMPLE_RATE, 3), wall_seconds=round(seconds, 3),
                rtf=round(seconds / max(samples, 1) * audio.SAMPLE_RATE, 4))


def _offline(backend, model: str, requests: list[TTSRequest], voice, info: dict) -> np.ndarray:
    """Every sentence synthesized, joined with pauses (a STREAMING backend's frames counted on the way)."""
    start, pieces, n_frames = time.perf_counter(), [], 0
    streams = STREAMING in backend.CAPABILITIES
    for request in requests:
        with voice():  # the adapted weights are needed for generating only: decoding is outside the turn
            frames = list(backend.frames(request)) if streams else None
            wav = None if streams else backend.synthesize(request, TTS_VOCODER_PRECISION)
        if streams:
            n_frames += len(frames)
            wav = backend.decode(frames, TTS_VOCODER_PRECISION)
        if len(wav):
            pieces += [wav, _pause()]
    if not pieces:
        raise ValueError(f"{model} stopped before its first frame: no audio was generated (try another seed)")
    wav = np.concatenate(pieces[:-1])
    if streams:
        info["frames"] = n_frames
    _timed(info, start, len(wav))
    return wav


def _streamed(backend, requests: list[TTSRequest], voice, chunk_frames: tuple[int, int],
              info: dict) -> Iterator[np.ndarray]:
    """Audio chunks as they are decoded: a STREAMING backend's frames through its streaming decoder,
    another backend's sentences whole."""
    start, total, n_frames = time.perf_counter(), 0, 0
    for index, request in enumerate(requests):
        if index:
            yield _pause()
            total += int(PAUSE_SECONDS * audio.SAMPLE_RATE)
        if STREAMING not in backend.CAPABILITIES:
            with voice():
                out = backend.synthesize(request, TTS_VOCODER_PRECISION)
            info.setdefault("first_chunk_s", round(time.perf_counter() - start, 3))
            total += len(out)
            yield out
            continue
        decoder = backend.streaming_decoder(TTS_VOCODER_PRECISION)
        # the first push once the decoder can give audio back: a vocoder with a wider receptive field lags more
        waiting, target = [], max(chunk_frames[0], decoder.lag)
        with voice():
            for z in backend.frames(request):
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
    if STREAMING in backend.CAPABILITIES:
        info["frames"] = n_frames
    _timed(info, start, total)

