"""What the runner evaluates: items read from a manifest, and systems that give audio for them.

Manifests: a seed-tts-eval list (`utt|prompt_text|prompt_wav|target_text[|gt_wav]`), or
JSONL rows from the corpus and task sets. Field names map onto one item:

    key         id | utt
    text        text | target_text
    reference   gt_wav | path | clean | target | ground_truth     (clean ground truth)
    enrollment  prompt_wav | enrollment | reference               (the target voice)
    prompt_text prompt_text                                       (the enrollment's transcript)
    input       noisy | mixture | source                          (what a system is given)
    interferer  interferer                                        (the other voice in a mixture)
    speaker     speaker | target_speaker | the reference's folder name

Systems: `gt` and `input` read the manifest's own audio; a codec (`vocoder`, the shared
vocoder's analysis-resynthesis and the ceiling of every mel-based model, or a vocoder checkpoint's,
`vocos=vocos`; a classical codec,
`codec2_700c`, `codec2_1200`, `opus_6k`; or a codec checkpoint such as `flow_vae`, or a token codec
at a window, `alm=alm_tokenizer:window=3`, or from its first layers alone, `rvq4=latent_rvq:layers=4`)
reconstructs the reference, its bitrate recorded; a TTS checkpoint (`sled`)
speaks the item's text, continuing the enrollment clip (with its prompt_text) when the
manifest gives one; a speech-to-speech checkpoint (`se=metis_se:seed=1`) or built-in baseline (`wiener`,
`noisereduce`, `deepfilternet`, `knn_vc`: models/speech_baselines.py) does the first task its config lists
on the item's input recording (with its enrollment clip as the voice); a folder holds
`<key>.wav` files made elsewhere. Generated systems
take options after the source, `NAME=SOURCE:cfg=1.5:seed=3` (TTS: cfg, seed, vocoder=NAME (hifigan or a
vocoder checkpoint) and the controls the model declares, e.g. SLED's stop_threshold, alias stop; and ttt=N,
test-time training on N posterior samples of each item's enrollment clip, with ttt_lr=its learning rate,
for a model that offers it; level_reference=0, the enrollment clip not trimmed and levelled like the corpus).
Other generated systems are entries of `GENERATORS`: name -> a factory
`factory(device) -> fn(item) -> (wav, sr)`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from models import audio
from models.data.manifest import read_jsonl, read_seed_tts, resolve_audio

FIELDS = {
    "key": ("id", "utt"),
    "text": ("text", "target_text"),
    "reference": ("gt_wav", "path", "clean", "target", "ground_truth"),
    "enrollment": ("prompt_wav", "enrollment", "reference"),
    "prompt_text": ("prompt_text",),
    "input": ("noisy", "mixture", "source"),
    "interferer": ("interferer",),
    "speaker": ("speaker", "target_speaker"),
}
AUDIO_FIELDS = ("reference", "enrollment", "input", "interferer")


@dataclass(frozen=True)
class Item:
    key: str
    text: str | None = None
    reference: Path | None = None
    enrollment: Path | None = None
    input: Path | None = None
    interferer: Path | None = None
    speaker: str | None = None
    prompt_text: str | None = None


def _first(row: dict, names: tuple[str, ...]):
    return next((row[n] for n in names if row.get(n) not in (None, "")), None)


def read_items(manifest: str | os.PathLike, split: str | None = None) -> list[Item]:
    """Items of a .lst or .jsonl manifest (optionally one split of a corpus manifest)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    rows = read_seed_tts(manifest) if manifest.suffix == ".lst" else read_jsonl(manifest)
    if split is not None:
        rows = [row for row in rows if row.get("split") == split]
    items, seen = [], set()
    for number, row in enumerate(rows, start=1):
        key = _first(row, FIELDS["key"])
        if key is None:
            raise ValueError(f"{manifest}: row {number} has no id/utt")
        for field_name in ("text", "prompt_text", "speaker", *AUDIO_FIELDS):
            value = _first(row, FIELDS[field_name])
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{manifest}: row {number}: {field_name} must be a string, not {value!r}")
        if key in seen:
            raise ValueError(f"{manifest}: duplicate key {key!r}")
        if "/" in str(key) or str(key).startswith("."):
            raise ValueError(f"{manifest}: key {key!r} cannot name a file")
        seen.add(key)
        paths = {f: _first(row, FIELDS[f]) for f in AUDIO_FIELDS}
        paths = {f: resolve_audio(manifest, p) if p else None for f, p in paths.items()}
        speaker = _first(row, FIELDS["speaker"])
        if speaker is None and (paths["reference"] or paths["enrollment"]):
            speaker = (paths["reference"] or paths["enrollment"]).parent.name
        items.append(Item(str(key), _first(row, FIELDS["text"]), speaker=speaker,
                          prompt_text=_first(row, FIELDS["prompt_text"]), **paths))
    if not items:
        raise ValueError(f"{manifest}: no items" + (f" in split {split!r}" if split else ""))
    return items


# item -> (audio, sample rate), or (audio, sample rate, numbers recorded beside the RTF, e.g. a codec's bitrate)
Generate = Callable[[Item], tuple]
GENERATORS: dict[str, Callable[[str], Generate]] = {}


def _reconstruct(codec: str, device: str, window: int | None = None, layers: int | None = None) -> Generate:
    from models import pipelines

    def generate(item: Item) -> tuple[np.ndarray, int, dict]:
        if item.reference is None:
            raise ValueError("no reference audio to reconstruct")
        wav = audio.load_audio(item.reference, audio.SAMPLE_RATE, max_seconds=None)
        out, info = pipelines.reconstruct(wav, audio.SAMPLE_RATE, codec, device, max_seconds=None, window=window,
                                          layers=layers)
        return out, audio.SAMPLE_RATE, {"bitrate": info["bitrate"]} if "bitrate" in info else {}

    return generate


def _needs_reference(model: str) -> bool:
    """Whether a speech-to-speech checkpoint's task takes a voice (convert: the target, extract: the
    enrollment); enhancement takes none."""
    from models import pipelines

    return pipelines.checkpoint_tasks(model)[0] != "enhance"


def _transform(model: str, device: str, seed: int = 0, **controls: float) -> Generate:
    """The first task a speech-to-speech checkpoint serves, on the item's input recording (and its
    enrollment clip as the voice); each item's seed is `seed` + a hash of its key."""
    import zlib

    from models import pipelines

    task = pipelines.checkpoint_tasks(model)[0]
    run = getattr(pipelines, task)

    def generate(item: Item) -> tuple[np.ndarray, int]:
        source = audio.load_audio(item.input, audio.SAMPLE_RATE, max_seconds=None)
        voice = ((audio.load_audio(item.enrollment, audio.SAMPLE_RATE, max_seconds=None), audio.SAMPLE_RATE)
                 if task != "enhance" else ())
        wav, _ = run(source, audio.SAMPLE_RATE, *voice, model=model, device=device,
                     seed=seed + zlib.crc32(item.key.encode()) % 100_000, **controls)
        return wav, audio.SAMPLE_RATE

    return generate


def _resynthesize(decoder: str, device: str, seed: int = 0, **controls: float) -> Generate:
    """An acoustic decoder on the item's reference audio: its semantic tokens turned back into speech, in the
    voice of the item's enrollment clip (a different utterance), or of the reference itself when the item has
    none. Each item's seed is `seed` + a hash of its key."""
    import zlib

    from models import pipelines

    def generate(item: Item) -> tuple[np.ndarray, int]:
        wav = audio.load_audio(item.reference, audio.SAMPLE_RATE, max_seconds=None)
        voice = wav if item.enrollment is None else audio.load_audio(
            item.enrollment, audio.SAMPLE_RATE, max_seconds=pipelines.MAX_REFERENCE_SECONDS)
        out, _ = pipelines.semantic_resynthesis(wav, audio.SAMPLE_RATE, decoder, voice, audio.SAMPLE_RATE, device,
                                                seed + zlib.crc32(item.key.encode()) % 100_000, **controls)
        return out, audio.SAMPLE_RATE

    return generate


TTS_OPTIONS = {"cfg": float, "seed": int, "level_reference": int}  # plus the model's own controls (a float each)
OPTION_ALIASES = {"stop": "stop_threshold"}  # short names kept from earlier command lines


def _speak(model: str, device: str, cfg: float = 2.0, seed: int = 0, ttt: int = 0, ttt_lr: float | None = None,
           vocoder: str | None = None, level_reference: int = 1, **controls: float) -> Generate:
    """TTS of item.text; with an enrollment clip, its voice continued from prompt_text (after fitting
    the model to it with `ttt` samples at learning rate `ttt_lr`, when ttt > 0), decoded by `vocoder`
    (None: the chosen one); level_reference=0 gives the model the enrollment clip as it is, not trimmed and
    levelled like the corpus.

    Each item's seed is `seed` + a hash of its key, so audio does not depend on the order,
    the shard or a resumed run. `controls` are the model's own sampling settings.
    """
    import zlib

    from evaluation.scorers import training_scorers
    from models import pipelines

    def generate(item: Item) -> tuple[np.ndarray, int]:
        if not item.text:
            raise ValueError("no text to speak")
        ref = None
        if item.enrollment is not None:
            if not item.prompt_text:
                raise ValueError("the enrollment clip has no prompt_text")
            ref = audio.load_audio(item.enrollment, audio.SAMPLE_RATE, max_seconds=pipelines.MAX_REFERENCE_SECONDS)
        if ttt and ref is None:
            raise ValueError("test-time training needs the item's enrollment clip")
        wav, info = pipelines.tts(item.text, model, ref, audio.SAMPLE_RATE, item.prompt_text, cfg=cfg,
                                  seed=seed + zlib.crc32(item.key.encode()) % 100_000, device=device,
                                  ttt_samples=ttt, scorers=training_scorers(device) if ttt else None, vocoder=vocoder,
                                  level_reference=bool(level_reference),
                                  **({"ttt_lr": ttt_lr} if ttt_lr is not None else {}), **controls)
        if refused := info.get("ttt", {}).get("refused"):  # scored as the unfitted model: said, not hidden
            logging.getLogger(__name__).warning("%s: test-time training refused for %s: %s", model, item.key, refused)
        return wav, audio.SAMPLE_RATE

    return generate


@dataclass(frozen=True)
class System:
    """name, and either a folder of wavs, a manifest field (gt, input), a codec, a TTS model, or a generator."""

    name: str
    # "folder", "manifest", "codec", "tts", "speech" (speech to speech), "resynthesis" (an acoustic decoder) or
    # "generator"
    kind: str
    source: str
    options: tuple[tuple[str, float], ...] = ()

    @property
    def generated(self) -> bool:
        return self.kind in ("codec", "tts", "speech", "resynthesis", "generator")

    def generator(self, device: str) -> Generate:
        if self.kind == "codec":
            return _reconstruct(self.source, device, **dict(self.options))
        if self.kind == "tts":
            return _speak(self.source, device, **dict(self.options))
        if self.kind == "speech":
            return _transform(self.source, device, **dict(self.options))
        if self.kind == "resynthesis":
            return _resynthesize(self.source, device, **dict(self.options))
        return GENERATORS[self.source](device)

    def missing(self, item: Item) -> str | None:
        """What the item lacks for this system to apply (a TTS needs text, a codec reference audio,
        ...), or None. A folder applies to every item: a file missing there is its own failure."""
        if self.kind == "tts":
            return None if item.text else "text"
        if self.kind == "speech":
            if item.input is None:
                return "an input recording"
            return "an enrollment clip" if _needs_reference(self.source) and item.enrollment is None else None
        if self.kind in ("codec", "resynthesis") or (self.kind == "manifest" and self.source == "gt"):
            return None if item.reference is not None else "reference audio"
        if self.kind == "manifest":
            return None if item.input is not None else "an input recording"
        return None

    def applies_to(self, item: Item) -> bool:
        """Whether this system can give audio for the item (for a folder: whether it holds the file)."""
        if self.kind == "folder":
            return (Path(self.source) / f"{item.key}.wav").is_file()
        return self.missing(item) is None

    def audio_path(self, item: Item, run_audio: Path) -> Path | None:
        if self.kind == "manifest":
            return getattr(item, "reference" if self.source == "gt" else "input")
        folder = Path(self.source) if self.kind == "folder" else run_audio / self.name
        return folder / f"{item.key}.wav"


MANIFEST_SYSTEMS = ("gt", "input")


def builtin_testsets(root: Path | None = None) -> dict[str, Path]:
    """Test sets the studio offers by name: the shipped ones (assets/testsets), then a built
    corpus's zero-shot lists and the task sets' test splits when they exist under data/."""
    from models.registry import ASSETS, REPO_ROOT

    data = (root or REPO_ROOT) / "data"
    found = {path.stem: path for path in sorted((ASSETS / "testsets").glob("*.jsonl"))}
    found.update({path.stem: path for path in sorted((data / "corpus" / "eval").glob("*.lst"))})
    found.update({path.stem: path for path in sorted((data / "corpus" / "eval").glob("*.jsonl"))})
    found.update({f"{path.parent.name}_test": path for path in sorted((data / "tasks").glob("*/test.jsonl"))})
    return found


def _options(spec: str, text: str, model: str) -> tuple[tuple[str, float], ...]:
    """`cfg=1.5:seed=3:stop_threshold=0.4` -> (("cfg", 1.5), ...), checked against cfg, seed, the
    controls the model declares and, for a model with test-time training, ttt and ttt_lr."""
    from models import pipelines

    types = {**TTS_OPTIONS, **({"ttt": int, "ttt_lr": float} if pipelines.fits_voices(model) else {}),
             **{name: float for name in pipelines.tts_controls(model)}}
    options = []
    for part in text.split(":") if text else []:
        key, sep, value = part.partition("=")
        key = OPTION_ALIASES.get(key, key)
        if key == "vocoder" and sep:  # a name, not a number: HiFi-GAN or a vocoder checkpoint
            from models.vocoder import check_vocoder

            try:
                options.append((key, check_vocoder(value)))
            except ValueError as error:
                raise ValueError(f"system {spec!r}: {error}") from None
            continue
        if not sep or key not in types:
            raise ValueError(f"system {spec!r}: options are {', '.join(k + '=' for k in (*types, 'vocoder'))}, "
                             f"not {part!r}")
        try:
            number = types[key](value)
        except ValueError:
            raise ValueError(f"system {spec!r}: {key} must be a {types[key].__name__}, not {value!r}") from None
        control = pipelines.SETTINGS.get(key) or pipelines.tts_controls(model)[key]
        try:  # the range the studio's widget and the CLI's flag share: refused before the run starts
            control.check(key, number)
        except ValueError as error:
            raise ValueError(f"system {spec!r}: {error}") from None
        options.append((key, number))
    return tuple(options)


def _speech_options(spec: str, text: str, model: str, controls: dict | None = None) -> tuple[tuple[str, float], ...]:
    """`seed=3:<control>=<value>` for a speech-to-speech model (or an acoustic decoder: its `controls`), each
    checked against its declared range."""
    from models import pipelines

    controls = pipelines.speech_controls(model) if controls is None else controls
    options = []
    for part in text.split(":") if text else []:
        key, sep, value = part.partition("=")
        control = pipelines.SETTINGS["seed"] if key == "seed" else controls.get(key)
        if not sep or control is None:
            raise ValueError(f"system {spec!r}: options are {', '.join(['seed=', *(k + '=' for k in controls)])}, "
                             f"not {part!r}")
        try:
            options.append((key, control.check(key, float(value))))
        except ValueError as error:
            raise ValueError(f"system {spec!r}: {error}") from None
    return tuple((k, int(v)) if k == "seed" else (k, v) for k, v in options)


def _codec_options(spec: str, text: str, codec: str) -> tuple[tuple[str, int], ...]:
    """`window=2` for a token codec (its bitrate) and `layers=4` (its first layers alone); other codecs take no
    options."""
    from models import pipelines

    windows = pipelines.codec_windows(codec)
    options = []
    for part in text.split(":") if text else []:
        key, sep, value = part.partition("=")
        if not windows or key not in ("window", "layers") or not sep:
            raise ValueError(f"system {spec!r}: " + (f"a token codec takes window= (one of {list(windows)}) and "
                                                     "layers=" if windows else f"{codec} takes no options"))
        if key == "window" and (not value.isdigit() or int(value) not in windows):
            raise ValueError(f"system {spec!r}: window must be one of {list(windows)}, not {value!r}")
        if key == "layers":
            count = pipelines.codec_layers(codec)
            if not value.isdigit() or not 1 <= int(value) <= count:
                raise ValueError(f"system {spec!r}: layers must be 1..{count}, not {value!r}")
        options.append((key, int(value)))
    return tuple(options)


def parse_system(spec: str) -> System:
    """`NAME` (a built-in) or `NAME=FOLDER_OR_BUILTIN`; a TTS model takes `:key=value` options, a token
    codec `:window=W` and `:layers=K`."""
    from models import pipelines

    name, _, source = spec.partition("=")
    source, _, options = (source or name).partition(":")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad system name in {spec!r}")
    kind = _role(source)
    if source in pipelines.CODECS or kind == "codec":  # before folders: a checkpoint is a folder too
        return System(name, "codec", source, _codec_options(spec, options, source))
    if options and kind not in ("tts", "speech", "resynthesis"):
        raise ValueError(f"system {spec!r}: only TTS models and token codecs take options (and speech-to-speech "
                         "models and acoustic decoders: a seed and their controls)")
    if kind == "tts":
        return System(name, "tts", source, _options(spec, options, source))
    if kind == "speech":
        if not pipelines.checkpoint_tasks(source):
            raise ValueError(f"system {spec!r}: {source} lists no tasks in its config")
        return System(name, "speech", source, _speech_options(spec, options, source))
    if kind == "resynthesis":
        return System(name, "resynthesis", source, _speech_options(spec, options, source,
                                                                   pipelines.acoustic_decoder_controls(source)))
    if source in MANIFEST_SYSTEMS:
        return System(name, "manifest", source)
    if source in GENERATORS:
        return System(name, "generator", source)
    if Path(source).is_dir():
        return System(name, "folder", str(Path(source).resolve()))
    raise ValueError(f"system {spec!r}: {source!r} is neither a folder, a codec or TTS checkpoint, nor one of "
                     f"{', '.join(MANIFEST_SYSTEMS + pipelines.CODECS + tuple(GENERATORS))}")


def _role(source: str) -> str | None:
    """"codec", "tts", "speech" or "resynthesis" when source names a checkpoint of that role (or a built-in
    speech-to-speech baseline), else None."""
    from models import pipelines, registry
    from models.roles import ACOUSTIC_DECODER, LATENT_CODEC, SPEECH_TO_SPEECH, TOKEN_CODEC, TTS, VOCODER

    if source in pipelines.SPEECH_BASELINES:
        return "speech"

    return {LATENT_CODEC: "codec", TOKEN_CODEC: "codec", VOCODER: "codec", TTS: "tts", SPEECH_TO_SPEECH: "speech",
            ACOUSTIC_DECODER: "resynthesis"}.get(registry.checkpoint_role(source))
