"""One function per user-facing task. The studio and the CLI call these and nothing deeper.

Every function takes audio as (samples, sample_rate) arrays or a path, validates it, and
returns audio at models.audio.SAMPLE_RATE plus a dict of the settings it used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterator

import numpy as np
import torch

from models import audio, classical_codecs, registry
from models.roles import LATENT_CODEC, SPEECH_TO_SPEECH, TOKEN_CODEC, TTS, Control, Scorers, TTSRequest
from models.text import check_text, split_sentences, transcript_prefix
from models.vocoder import get_vocoder

# Built in: the vocoder's analysis-resynthesis and the classical baselines; trained codecs are checkpoints
# of the latent- or token-codec role.
CODECS = ("vocoder", *classical_codecs.CODECS)
MAX_TTS_CHARS = 2000
MAX_REFERENCE_SECONDS = 20.0  # a voice prompt longer than this is cut at a pause (cut_reference)
MAX_REFERENCE_UPLOAD_SECONDS = 600.0
PAUSE_SECONDS = 0.2  # silence between sentences
TTS_VOCODER_PRECISION = "bf16"  # 2x faster synthesis, same PESQ (see models.vocoder.PRECISIONS)
MAX_SEED = 2**32 - 1
TTT_LR = 3e-5  # the test-time training sweep's choice (docs/kalle.md); the paper's 1e-6 barely moves our model
# The settings every TTS request takes, beside a backend's own CONTROLS: one declared range each, shared by the
# studio's widgets, the CLI's flags and the evaluation system specs (`name=model:cfg=2:seed=3:ttt=50`).
SETTINGS = {
    "cfg": Control("Classifier-free guidance scale", 1.0, 10.0, 2.0, 0.1),  # 1 = none; the papers' best: 2-3
    "seed": Control("Seed", 0, MAX_SEED, 0, 1),
    "ttt": Control("Test-time training samples (N)", 1, 2000, 200, 1),
    "ttt_lr": Control("Test-time training learning rate", 1e-7, 1e-2, TTT_LR, 1e-7),
}
CFG_RANGE = (SETTINGS["cfg"].minimum, SETTINGS["cfg"].maximum)
TTT_LR_RANGE = (SETTINGS["ttt_lr"].minimum, SETTINGS["ttt_lr"].maximum)
MAX_FITTED_VOICES = 8  # test-time-trained voices kept in memory (least recently used dropped)
# A fitted voice is kept only if it speaks these check sentences (prompted by its reference, same seeds) no
# worse than the unfitted model: each length within TTT_CHECK_RATIO of the unfitted one (fitting can break the
# model's sense of where speech ends), and, with scorers, no more word errors and no lower similarity to the
# reference. A duration check alone let through fits that garbled real recordings.
TTT_CHECK_TEXTS = ("The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
                   "These days a chicken leg is a rare dish.")
TTT_CHECK_RATIO = (0.8, 1.2)
ROLE_NAMES = {LATENT_CODEC: "codec", TOKEN_CODEC: "token codec", TTS: "TTS model",
              SPEECH_TO_SPEECH: "speech-to-speech model"}


def check_sampling(cfg: float, seed: int | None) -> int | None:
    """One clear line for a guidance scale or seed out of range (NaN included); returns the seed as an int."""
    SETTINGS["cfg"].check("the guidance scale (cfg)", cfg)
    return None if seed is None else check_seed(seed)


def check_seed(seed) -> int:
    """A seed as typed (3, 3.0, "3") -> int; 3.7, "abc", NaN or one out of range is one line, never rounded."""
    try:
        number = float(seed)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(seed, bool) or not (number.is_integer() and 0 <= number <= MAX_SEED):
        raise ValueError(f"the seed must be a whole number from 0 to {MAX_SEED}, not {seed!r}")
    return int(number)


def available_codecs() -> list[str]:
    """The built-in codecs plus every local codec checkpoint, latent and token (for menus)."""
    return list(CODECS) + available_latent_codecs() + available_token_codecs()


def available_latent_codecs() -> list[str]:
    """Every local latent codec checkpoint (for menus of what has latents to explore)."""
    return registry.checkpoints_with_role(LATENT_CODEC)


def available_token_codecs() -> list[str]:
    """Every local token codec checkpoint (ALMTokenizer)."""
    return registry.checkpoints_with_role(TOKEN_CODEC)


def codec_windows(codec: str) -> tuple[int, ...]:
    """The windows (bitrates) a token codec checkpoint serves; () for any other codec."""
    if codec in CODECS or registry.checkpoint_role(codec) != TOKEN_CODEC:
        return ()
    return tuple(registry.checkpoint_config(codec).get("windows", ()))


def codec_bitrate(codec: str, window: int | None = None, device: str | None = None) -> float | None:
    """Bits per second of a codec (at a token codec's window); None for the vocoder and latent codecs,
    whose frames are continuous."""
    if codec in classical_codecs.CODECS:
        return classical_codecs.CODECS[codec].bitrate
    if codec in CODECS or registry.checkpoint_role(codec) != TOKEN_CODEC:
        return None
    return _checkpoint_model(codec, TOKEN_CODEC, device)[0].bitrate_at(window)


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
    max_seconds: float | None = audio.MAX_SECONDS, window: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Analysis-resynthesis through a codec; returns (audio at 22.05 kHz, info).

    "vocoder" is the mel -> HiFi-GAN round trip, the ceiling for every mel-based model; a classical
    codec (Codec 2, Opus) runs its reference tools; a latent codec decodes its posterior mean; a token
    codec its tokens at `window` (its bitrate; default the checkpoint's).
    """
    wav = audio.prepare_audio(wav, sr, max_seconds=max_seconds, name="input audio")
    token_codec = codec not in CODECS and registry.checkpoint_role(codec) == TOKEN_CODEC
    if window is not None and not token_codec:
        raise ValueError(f"only a token codec takes a window (bitrate); {codec} is not one")
    extra: dict = {}
    if codec == "vocoder":
        vocoder = get_vocoder(device)
        run_device = str(vocoder.device)
        start = time.perf_counter()
        out = vocoder.resynthesize(wav)
    elif codec in classical_codecs.CODECS:
        run_device, start = "cpu", time.perf_counter()
        out, bits = classical_codecs.CODECS[codec].roundtrip(wav)
        extra = {"bitrate": classical_codecs.CODECS[codec].bitrate, "coded_bits": bits}
    elif token_codec:
        model = _checkpoint_model(codec, TOKEN_CODEC, device)[0]
        window = model.check_window(window)
        run_device = str(next(model.parameters()).device)
        start = time.perf_counter()
        tokens = model.encode_wav(wav, window)
        out = _fit_length(model.decode_tokens(tokens, window), len(wav))
        extra = {"window": window, "bitrate": round(model.bitrate_at(window), 1), "tokens": list(tokens.shape)}
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
        "wall_seconds": round(seconds, 3), "rtf": round(seconds / duration, 4), **extra,
    }


def _fit_length(wav: np.ndarray, length: int) -> np.ndarray:
    """Cut or zero-pad a decoded waveform to the input's length (codecs pad to whole frames)."""
    return wav[:length] if len(wav) >= length else np.pad(wav, (0, length - len(wav)))


CODES_FORMAT = "speech-studio codes v1"


def encode_file(wav: np.ndarray, sr: int, codec: str, out: str | os.PathLike, window: int | None = None,
                device: str | None = None, max_seconds: float | None = audio.MAX_SECONDS) -> dict:
    """A recording's codes in an .npz: a token codec's int64 tokens (codebooks, frames), or a latent
    codec's posterior means (frames, dims), with a JSON header naming the codec, its window and bitrate
    (no pickles: the header is a string array). Written to a temp file, then renamed."""
    import json

    from models.files import atomic_path

    wav = audio.prepare_audio(wav, sr, max_seconds=max_seconds, name="input audio")
    role = None if codec in CODECS else registry.checkpoint_role(codec)
    if role == TOKEN_CODEC:
        model = _checkpoint_model(codec, TOKEN_CODEC, device)[0]
        window = model.check_window(window)
        codes = model.encode_wav(wav, window)
        header = {"kind": "tokens", "window": window, "bitrate": model.bitrate_at(window),
                  "frame_rate": model.frame_rate_at(window), "codebook_size": model.codebook_size}
    elif role == LATENT_CODEC and window is None:
        model = _codec_model(codec, device)
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
    import json
    import zipfile
    from pathlib import Path

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
        model = _checkpoint_model(codec, TOKEN_CODEC, device)[0]
        out = model.decode_tokens(codes, header["window"])
    else:
        out = _codec_model(codec, device).decode_wav(codes)
    return _fit_length(out, int(header["samples"])), header


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


def encode_tokens(
    wav: np.ndarray, sr: int, codec: str, device: str | None = None, window: int | None = None,
    max_seconds: float | None = audio.MAX_SECONDS,
) -> tuple[np.ndarray, np.ndarray]:
    """A token codec's view of one recording: its tokens (codebooks, frames) and what they stand for,
    the summed codewords (frames, dim), for statistics and plots."""
    wav = audio.prepare_audio(wav, sr, max_seconds=max_seconds, name="input audio")
    model = _checkpoint_model(codec, TOKEN_CODEC, device)[0]
    tokens = model.encode_wav(wav, window)
    return tokens, model.embed(tokens)


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


_FITTED: OrderedDict[tuple[str, str], tuple[dict, dict]] = OrderedDict()  # (owner, voice) -> (weight delta, info)
_FITTED_LOCK = threading.RLock()


def fits_voices(model: str) -> bool:
    """Whether a TTS checkpoint's model offers test-time training on a reference (`fit_voice`)."""
    return hasattr(registry.model_class(tts_kind(model)), "fit_voice")


def fit_voice(model: str, ref: np.ndarray, ref_text: str, samples: int, device: str | None = None,
              progress: Callable[[int, int], None] | None = None, lr: float = TTT_LR,
              owner: str = "", scorers: Scorers | None = None) -> tuple[dict, dict]:
    """Test-time training of a TTS model on one reference clip (22.05 kHz) and its transcript at
    learning rate `lr`: the model's weight delta for that voice, kept in memory (MAX_FITTED_VOICES,
    least recently used go) so the same reference is fitted once per `owner` (a studio visitor's
    session: one visitor never uses or clears another's fit). A fit that speaks the TTT_CHECK_TEXTS
    worse than the unfitted model (lengths; with `scorers`' transcribe, word_errors and similarity, also
    intelligibility and likeness to the reference) is refused: an empty delta, and info["refused"] says
    why. Returns (delta, info)."""
    generator, _ = _checkpoint_model(model, TTS, device)
    if not hasattr(generator, "fit_voice"):
        raise ValueError(f"{model} has no test-time training (a backend offers it with fit_voice)")
    SETTINGS["ttt"].check("test-time training samples", samples)
    SETTINGS["ttt_lr"].check("test-time training learning rate", lr)
    key = hashlib.sha256(b"".join([model.encode(), ref.astype(np.float32).tobytes(), ref_text.encode(),
                                   str(samples).encode(), repr(lr).encode()])).hexdigest()[:16]
    with _FITTED_LOCK:
        if (owner, key) in _FITTED:
            _FITTED.move_to_end((owner, key))
            delta, info = _FITTED[owner, key]
            return delta, {**info, "cached": True}
    codec = _codec_model(generator.codec, device)
    mean, std = codec.encode_wav(ref)
    start = time.perf_counter()
    with registry.resident(("turn", id(generator)), threading.Lock):  # training moves the resident weights
        delta = generator.fit_voice(ref, mean, std, ref_text, samples=samples, lr=lr, progress=progress)
        check, worse = _fit_check(generator, codec, torch.from_numpy(mean), ref_text, ref, delta, scorers)
    info = {"voice": key, "cached": False, "samples": samples, "lr": lr, "check": check,
            "wall_seconds": round(time.perf_counter() - start, 2)}
    if worse:
        info["refused"] = (f"fitting did not help this voice: {worse}, so synthesis keeps the unfitted model "
                           "for this clip")
        delta = {}
    with _FITTED_LOCK:
        _FITTED[owner, key] = (delta, info)
        while len(_FITTED) > MAX_FITTED_VOICES:
            _FITTED.popitem(last=False)
    return delta, info


def _fit_check(generator, codec, prompt: torch.Tensor, prompt_text: str, ref: np.ndarray, delta: dict,
               scorers: Scorers | None) -> tuple[dict, str | None]:
    """The TTT_CHECK_TEXTS spoken without and with the fitted voice: (what was measured, how the fitted
    model is worse, or None)."""
    settings = {name: control.default for name, control in getattr(generator, "CONTROLS", {}).items()}
    spoken: dict[str, list[np.ndarray]] = {"plain": [], "fitted": []}
    for index, text in enumerate(TTT_CHECK_TEXTS):
        request = TTSRequest(text, prompt, prompt_text, 2.0, index, settings, reference=ref)
        for which in spoken:
            with generator.adapted(delta) if which == "fitted" else contextlib.nullcontext():
                z = list(generator.frames(request))
            spoken[which].append(codec.decode_wav(torch.stack(z), precision=TTS_VOCODER_PRECISION) if z
                                 else np.zeros(0, np.float32))
    ratios = [len(f) / max(len(p), 1) for p, f in zip(spoken["plain"], spoken["fitted"])]
    check: dict = {"length_ratios": [round(r, 3) for r in ratios]}
    outside = [r for r in ratios if not TTT_CHECK_RATIO[0] <= r <= TTT_CHECK_RATIO[1]]
    if outside:
        return check, f"the fitted model spoke a check sentence {outside[0]:.1f}x as long as the unfitted one"
    if scorers is None or scorers.transcribe is None or scorers.word_errors is None or scorers.similarity is None:
        return check, None
    rate = audio.SAMPLE_RATE
    errors = {which: sum(scorers.word_errors(text, scorers.transcribe(wav, rate))[0]
                         for text, wav in zip(TTT_CHECK_TEXTS, wavs)) for which, wavs in spoken.items()}
    likeness = {which: float(np.mean([scorers.similarity(ref, wav, rate) for wav in wavs]))
                for which, wavs in spoken.items()}
    check.update(word_errors=errors, similarity={k: round(v, 3) for k, v in likeness.items()})
    if errors["fitted"] > errors["plain"]:
        return check, (f"the fitted model made {errors['fitted']} word errors in the check sentences against "
                       f"{errors['plain']} for the unfitted one")
    if likeness["fitted"] < likeness["plain"]:
        return check, (f"the fitted model sounds less like the reference than the unfitted one "
                       f"({likeness['fitted']:.2f} similarity against {likeness['plain']:.2f})")
    return check, None


def clear_fitted_voices(owner: str | None = None) -> int:
    """Forget the test-time-trained voices of one owner (None: everyone's); returns how many there were."""
    with _FITTED_LOCK:
        gone = [key for key in _FITTED if owner is None or key[0] == owner]
        for key in gone:
            del _FITTED[key]
    return len(gone)


def tts(
    text: str, model: str = "sled", ref_wav: np.ndarray | None = None, ref_sr: int | None = None,
    ref_text: str | None = None, cfg: float = 2.0, seed: int | None = None, stream: bool = False,
    device: str | None = None, max_chars: int = MAX_TTS_CHARS,
    transcribe: Callable[[np.ndarray], str] | None = None, chunk_frames: tuple[int, int] = (20, 20),
    ttt_samples: int = 0, ttt_progress: Callable[[int, int], None] | None = None, ttt_lr: float = TTT_LR,
    owner: str = "", scorers: Scorers | None = None, **controls: float,
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
    gains timings as it runs. With ttt_samples > 0 and a reference, a model that offers it is first
    fitted to the reference's voice (`fit_voice` at learning rate ttt_lr, checked with `scorers`, cached
    per reference and owner).
    """
    seed = check_sampling(cfg, seed)
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
        ref = audio.prepare_audio(ref_wav, ref_sr, max_seconds=MAX_REFERENCE_UPLOAD_SECONDS, name="reference audio")
        ref, ref_text, cut = cut_reference(ref, ref_text, transcribe)
        prompt_text = check_text(ref_text)
        prompt = torch.from_numpy(codec.encode_wav(ref)[0])
    info = {"model": model, "codec": generator.codec, "cfg": cfg, "seed": seed, "sentences": len(sentences),
            "reference": ref_wav is not None, "ref_text": ref_text, **settings,
            "vocoder_precision": TTS_VOCODER_PRECISION, "device": str(next(generator.parameters()).device)}
    if ref is not None:
        info["reference_cut"] = cut
    delta = None
    if ttt_samples:
        if ref is None:
            raise ValueError("test-time training needs a reference clip and its transcript")
        delta, info["ttt"] = fit_voice(model, ref, prompt_text, ttt_samples, device, ttt_progress, ttt_lr,
                                       owner, scorers)

    # A backend that can be adapted (test-time training) changes its resident weights while adapted:
    # its generations take turns, so no request sees another's voice.
    turn = registry.resident(("turn", id(generator)), threading.Lock) if hasattr(generator, "adapted") else None

    def frames(index: int, sentence: str):
        request = TTSRequest(sentence, prompt, prompt_text, None if cfg == 1.0 else cfg, seed + index, settings,
                             reference=ref)
        with turn or contextlib.nullcontext(), generator.adapted(delta) if delta else contextlib.nullcontext():
            yield from generator.frames(request)

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


# --------------------------------------------------------------- batch synthesis


BATCH_RECORD = "synthesis.jsonl"  # one line per finished utterance, beside the audio


def read_tts_lines(path: str) -> list[dict]:
    """Utterances to synthesize: a text file (one sentence or paragraph per non-empty line, ids
    0001, 0002, ...) or a JSONL manifest (rows with `text`, optional `id`, `ref`, `ref_text`, `seed`)."""
    from models.data import manifest as mf

    if str(path).endswith(".jsonl"):
        rows = mf.read_jsonl(path)
        for number, row in enumerate(rows, start=1):
            if not isinstance(row.get("text"), str) or not row["text"].strip():
                raise ValueError(f"{path}: row {number} has no text")
            row.setdefault("id", f"{number:04d}")
            if row.get("ref"):
                row["ref"] = str(mf.resolve_audio(path, row["ref"]))
    else:
        lines = [line.strip() for line in mf.read_text(path).splitlines()]
        rows = [{"id": f"{n:04d}", "text": line} for n, line in enumerate((x for x in lines if x), start=1)]
    if not rows:
        raise ValueError(f"{path}: nothing to synthesize")
    ids = [str(r["id"]) for r in rows]
    if len(set(ids)) != len(ids) or any(not i or "/" in i or i.startswith(".") for i in ids):
        raise ValueError(f"{path}: ids must be unique file names")
    return rows


def tts_batch(rows: list[dict], out_dir: str, model: str = "sled", seed: int | None = None, fmt: str = ".wav",
              progress: Callable[[Iterator], Iterator] | None = None, **settings) -> dict:
    """Synthesize every row into out_dir/<id><fmt>, the model loaded once; each finished utterance
    appends its settings, seed and timings to out_dir/synthesis.jsonl. Run again, it resumes: rows
    whose audio and record exist are skipped. Row i's seed is its own `seed`, else seed + i; without
    `seed`, a base seed is drawn once and kept in out_dir/batch_seed, so a resumed batch goes on with it."""
    import json
    from pathlib import Path

    from models.files import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = out / BATCH_RECORD
    done = set()
    if record.is_file():
        for line in record.read_text().splitlines():
            try:  # a line cut short by a crash is redone
                done.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    kept = out / "batch_seed"
    if seed is None and kept.is_file():
        base = check_seed(kept.read_text().strip())
    else:
        base = random.randrange(2**31) if seed is None else seed
        write_text_atomic(kept, f"{base}\n")
    if base + len(rows) - 1 > MAX_SEED:  # before any row is written
        raise ValueError(f"the seed {base} + {len(rows) - 1} lines goes past {MAX_SEED}: choose a smaller --seed")
    todo = [(i, r) for i, r in enumerate(rows) if not (str(r["id"]) in done and (out / f"{r['id']}{fmt}").is_file())]
    for index, row in (progress or iter)(todo):
        ref = None
        if row.get("ref"):
            ref = audio.load_audio(row["ref"], audio.SAMPLE_RATE, max_seconds=MAX_REFERENCE_UPLOAD_SECONDS)
        row_seed = check_seed(row["seed"]) if row.get("seed") is not None else base + index
        wav, info = tts(row["text"], model=model, ref_wav=ref, ref_sr=audio.SAMPLE_RATE, ref_text=row.get("ref_text"),
                        seed=row_seed, **settings)
        path = audio.save_audio(out / f"{row['id']}{fmt}", wav)
        entry = {"id": str(row["id"]), "text": row["text"], "audio": path.name, "ref": row.get("ref"), **info}
        with open(record, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    return {"rows": len(rows), "synthesized": len(todo), "skipped": len(rows) - len(todo), "record": str(record),
            "seed": base}
