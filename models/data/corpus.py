"""Builds the multi-speaker speech corpus from text-to-speech voices.

    plan (texts x voices, seeded) -> synthesize in worker processes -> trim, 22.05 kHz,
    -23 LUFS -> wavs/<voice>/<text id>.wav -> manifest.jsonl + eval lists + build.json

Splits are by sentence: Harvard lines 601-720 are the test sentences, Harvard 541-600 and
300 LJ Speech lines validation, the rest training. Held-out speakers (voices.py) speak
only test sentences, in the split "heldout". A build resumes: finished files are final
(temp file, then rename) and skipped; a sentence an engine fails on is logged and skipped.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import tempfile
import time
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf

from models import audio
from models.data import manifest as mf
from models.data import speakers
from models.data.voices import ENGINES, INSTALL, LICENCES, VOICES, Job, Voice, family, select_voices
from models.registry import ASSETS
from models.text import TextFrontend, normalize_text

TEXTS = ASSETS / "text"
CHARS_PER_SECOND = 17.0  # measured over all engines (mini build), to plan hours before synthesis
CHARS_PER_SECOND_BY_ENGINE = {"kokoro": 14.1}  # its training sentences, v3 build; others use the above
RATE_RANGE = (0.9, 1.15)  # duration stretch per utterance
PITCH_RANGE = (-1.5, 1.5)  # semitones, where the engine can shift pitch
BATCH = 24


@dataclass(frozen=True)
class Profile:
    name: str
    train_hours: float | None  # spread evenly over the engine voices' seen speakers; None: train_sentences each
    train_sentences: int
    valid_sentences: int
    test_sentences: int
    all_voices: bool = True  # False: the core voices only (voices.Voice.core)
    pseudo_per_voice: int = 2  # pseudo-speakers made from each voice
    pseudo_sources: int | None = None  # made from the first N voices only (None: all)
    # Voices beyond the core ones read fewer validation and test sentences: many voices, short lists.
    extra_valid_sentences: int = 5
    extra_test_sentences: int = 20
    natural_hours: float | None = None  # training hours of the natural-voice family (Kokoro), over its seen speakers
    natural_seen_test_sentences: int = 8  # test sentences of its seen voices beyond the core ones (speaker count: 8)
    # Kokoro's five voices blend into few distinct people (docs/corpus.md): pseudo-speakers do most of the spreading.
    natural_pseudo_per_voice: int = 4
    engines: tuple[str, ...] | None = None  # only these engines' voices (None: all)

    def voices(self) -> list[Voice]:
        base = [v for v in VOICES if (self.all_voices or v.core) and (self.engines is None or v.engine in self.engines)]
        engine_voices = [v for v in base if family(v.engine) == "engine"]
        natural = [v for v in base if family(v.engine) == "natural"]
        return (base + speakers.pseudo_voices(engine_voices, self.pseudo_per_voice, self.pseudo_sources)
                + speakers.pseudo_voices(natural, self.natural_pseudo_per_voice))

    def hours(self, voice_family: str) -> float | None:
        return self.natural_hours if voice_family == "natural" else self.train_hours


ENGINE_VOICES = ("flite", "festival", "piper", "espeak", "rhvoice", "pico")
PROFILES = {
    "mini": Profile("mini", None, train_sentences=3, valid_sentences=1, test_sentences=2, all_voices=False,
                    pseudo_per_voice=1, pseudo_sources=3, extra_valid_sentences=1, extra_test_sentences=2,
                    natural_pseudo_per_voice=0),
    # Corpus v3: the engine voices of v2 and 8 h of Kokoro's blended voices.
    "default": Profile("default", 20.0, train_sentences=0, valid_sentences=40, test_sentences=120,
                       natural_hours=8.0),
    "v2": Profile("v2", 20.0, train_sentences=0, valid_sentences=40, test_sentences=120, engines=ENGINE_VOICES),
}


# ------------------------------------------------------------------ texts


def sentence_pools() -> dict[str, list[tuple[str, str]]]:
    """(text id, text) per split; fixed, whatever the build's seed."""
    harvard = [line.strip() for line in (TEXTS / "harvard_sentences.txt").read_text().splitlines()]
    harvard = [(f"harvard-{i:03d}", t) for i, t in enumerate(harvard, start=1)]
    lj = [tuple(line.split("\t", 1)) for line in (TEXTS / "ljspeech_texts.tsv").read_text().splitlines() if line]
    random.Random(1234).shuffle(lj)
    return {
        "test": harvard[600:720],
        "valid": harvard[540:600] + lj[:300],
        "train": harvard[:540] + lj[300:],
    }


def _rng(seed: int, *keys: str) -> random.Random:
    return random.Random(zlib.crc32("/".join([str(seed), *keys]).encode()))


def plan(profile: Profile, voices: list[Voice], seed: int = 0, train_hours: float | None = None,
         natural_hours: float | None = None) -> list[dict]:
    """Manifest rows (without duration and phonemes) for every utterance to synthesize. Each family (engine
    voices, natural voices) shares its own training hours among its seen speakers."""
    pools = sentence_pools()
    given = {"engine": train_hours, "natural": natural_hours}
    rows = []
    for voice in voices:
        voice_family = family(voice.engine)
        hours = given[voice_family] if given[voice_family] is not None else profile.hours(voice_family)
        seen_speakers = {v.speaker for v in voices if not v.held_out and family(v.engine) == voice_family}
        chars_per_second = CHARS_PER_SECOND_BY_ENGINE.get(voice.engine, CHARS_PER_SECOND)
        rng = _rng(seed, voice.name)
        n_test = profile.test_sentences if voice.core else profile.extra_test_sentences
        n_valid = profile.valid_sentences if voice.core else profile.extra_valid_sentences
        if voice_family == "natural" and not voice.core and not voice.held_out:  # many seen speakers: fewer each
            n_test, n_valid = min(n_test, profile.natural_seen_test_sentences), min(n_valid, 2)
        if voice.held_out:
            chosen = [("heldout", t) for t in pools["test"][:n_test]]
        else:
            chosen = [("test", t) for t in pools["test"][:n_test]]
            valid = rng.sample(pools["valid"], k=min(n_valid, len(pools["valid"])))
            chosen += [("valid", t) for t in sorted(valid)]
            order = rng.sample(pools["train"], k=len(pools["train"]))
            if hours is None:
                chosen += [("train", t) for t in order[: profile.train_sentences]]
            else:
                # A speaker's quota is shared by the engines that voice it.
                engines = sum(1 for v in voices if v.speaker == voice.speaker and not v.held_out)
                budget = hours * 3600 / len(seen_speakers) / engines
                for text_id, text in order:
                    if budget <= 0:
                        break
                    chosen.append(("train", (text_id, text)))
                    budget -= len(text) / chars_per_second
        for split, (text_id, text) in chosen:
            rows.append({
                "id": f"{voice.name}_{text_id}", "speaker": voice.speaker, "engine": voice.engine,
                "voice": voice.voice, "text": text, "normalized_text": normalize_text(text),
                "path": f"wavs/{voice.name}/{text_id}.wav", "split": split,
                "rate": round(rng.uniform(*RATE_RANGE), 3),
                "pitch": round(rng.uniform(*PITCH_RANGE), 2) if ENGINES[voice.engine].pitch else 0.0,
                "family": voice_family, "licence": LICENCES[voice.engine],
                **ENGINES[voice.engine].describe(voice), **speakers.describe(voice),
            })
    return rows


# -------------------------------------------------------------- synthesis


def _finish(raw: Path, final: Path, voice: Voice) -> None:
    """Engine output -> (a pseudo-speaker's transform) -> trimmed, 22.05 kHz, loudness-levelled 16-bit
    wav at its final path."""
    wav = audio.load_audio(raw, audio.SAMPLE_RATE, max_seconds=None)
    if voice.transform is not None:
        wav = speakers.apply_transform(wav, audio.SAMPLE_RATE, voice.transform, zlib.crc32(final.name.encode()))
    audio.save_audio(final, audio.like_corpus(wav, audio.SAMPLE_RATE), audio.SAMPLE_RATE)


def _synthesize_batch(task: tuple[list[dict], str, Voice]) -> list[tuple[str, str | None]]:
    """Worker: one voice's batch -> [(id, error or None)]."""
    rows, out_dir, voice = task
    jobs = [Job(r["id"], voice, r["normalized_text"], *speakers.engine_request(voice, r["rate"], r["pitch"]))
            for r in rows]
    work = Path(tempfile.mkdtemp(prefix="batch-", dir=Path(out_dir) / ".tmp"))
    try:
        raw = ENGINES[voice.engine].synthesize(jobs, work)
        results = []
        for row in rows:
            outcome = raw.get(row["id"], "engine returned nothing")
            if isinstance(outcome, Path):
                try:
                    _finish(outcome, Path(out_dir) / row["path"], voice)
                    outcome = None
                except ValueError as error:  # silent or unreadable engine output
                    outcome = str(error)
            results.append((row["id"], outcome))
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build(
    out_dir: str | Path, profile: str = "default", train_hours: float | None = None,
    voices: list[str] | None = None, workers: int | None = None, seed: int = 0, log=print,
    engines: list[str] | None = None, natural_hours: float | None = None,
) -> dict:
    """Synthesize (or finish) a corpus in out_dir; returns the build report (also build.json). `engines`
    builds part of the profile (a later build without it finishes the rest, keeping what is done); the
    manifest and eval lists still list every finished clip of the profile, the other engines' too."""
    from tqdm import tqdm

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    if train_hours is not None and train_hours <= 0:
        raise ValueError(f"--hours must be positive, got {train_hours}")
    if natural_hours is not None and natural_hours <= 0:
        raise ValueError(f"--kokoro-hours must be positive, got {natural_hours}")
    if engines and (unknown := sorted(set(engines) - set(ENGINES))):
        raise ValueError(f"unknown engines: {', '.join(unknown)} (known: {', '.join(ENGINES)})")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder")
    (out / ".tmp").mkdir(parents=True, exist_ok=True)
    profile_voices = select_voices(voices, tuple(PROFILES[profile].voices()))
    wanted = [v for v in profile_voices if not engines or v.engine in engines]
    missing = sorted({v.engine for v in wanted if not ENGINES[v.engine].available()})
    for engine in missing:
        log(f"engine {engine} is not installed; skipping its voices. Install: {INSTALL[engine]}")
    for engine in sorted({v.engine for v in wanted} - set(missing)):
        if problem := ENGINES[engine].problem():
            log(f"engine {engine} cannot run; skipping its voices: {problem}")
            missing.append(engine)
    usable = [v for v in wanted if v.engine not in missing]
    if not any(not v.held_out for v in usable):
        raise ValueError("no voice for training is available: install at least one engine (see above)")

    for voice in usable:
        _forget_stale_pseudo_speaker(out, voice, log)
    _refinish(out, workers or multiprocessing.cpu_count(), log)
    rows = plan(PROFILES[profile], usable, seed, train_hours, natural_hours)
    listed, listed_voices = rows, usable
    if engines:  # planned with the voices a whole build would use, so the other engines' clips keep their rows
        listed_voices = [v for v in profile_voices if v in usable or (v.engine not in engines and
                                                                      ENGINES[v.engine].available())]
        listed = plan(PROFILES[profile], listed_voices, seed, train_hours, natural_hours)
    todo = [r for r in rows if not (out / r["path"]).is_file()]
    log(f"{len(rows)} utterances planned from {len(usable)} voices; {len(rows) - len(todo)} already done")
    batches, by_speaker = [], {v.speaker: v for v in usable if v.transform}
    for voice_rows in _group(todo, key=lambda r: (r["engine"], r["voice"], r["speaker"])).values():
        first = voice_rows[0]
        voice = by_speaker.get(first["speaker"]) or next(
            v for v in usable if v.engine == first["engine"] and v.voice == first["voice"] and not v.transform)
        batches += [(voice_rows[i : i + BATCH], str(out), voice) for i in range(0, len(voice_rows), BATCH)]
    random.Random(seed).shuffle(batches)  # mix slow and fast engines across workers

    failures, start = {}, time.perf_counter()
    workers = workers or multiprocessing.cpu_count()
    try:
        with multiprocessing.get_context("spawn").Pool(workers) as pool, \
                tqdm(total=len(todo), unit="utt", desc="synthesizing", disable=not todo) as bar:
            for results in pool.imap_unordered(_synthesize_batch, batches):
                for utt_id, error in results:
                    if error:
                        failures[utt_id] = error
                bar.update(len(results))
    finally:  # also after Ctrl-C: describe what is finished, so nothing is lost
        wall = time.perf_counter() - start
        for folder in (out / "wavs").glob("*/"):  # what this build made was finished by today's rule
            if folder.is_dir() and not (folder / FINISH_MARK).is_file():
                mf.write_text_atomic(folder / FINISH_MARK, audio.FINISH + "\n")
        report = _write_outputs(out, listed, todo, failures, wall, profile, seed, listed_voices, missing, workers)
        shutil.rmtree(out / ".tmp", ignore_errors=True)
    for utt_id, error in sorted(failures.items()):
        log(f"failed {utt_id}: {error}")
    log(summary_table(report))
    return report


def _forget_stale_pseudo_speaker(out: Path, voice: Voice, log) -> None:
    """A resumed build keeps finished files; a pseudo-speaker whose transform has changed since
    (wavs/<name>/transform.json) has its files made again, so no voice mixes two transforms."""
    if voice.transform is None:
        return
    folder = out / "wavs" / voice.name
    record = json.dumps(asdict(voice.transform), sort_keys=True)
    stored = folder / "transform.json"
    if stored.is_file() and stored.read_text() != record:
        stale = sorted(folder.glob("*.wav"))
        log(f"{voice.name}: its transform changed; remaking its {len(stale)} files")
        for path in stale:
            path.unlink()
    mf.write_text_atomic(stored, record)


REFINISH_TOLERANCE = 0.02  # seconds
FINISH_MARK = "finish.txt"  # per voice folder: the finishing rule (audio.FINISH) its clips were made under


def _refinish(out: Path, workers: int, log) -> None:
    """Clips finished under an older rule are finished again from themselves, in place, one voice folder at
    a time (its mark is written last, so an interrupted build resumes). A clip whose audio changes loses its
    cached features (cache/*/<id>.npy), which training computes again; the manifest's durations follow at
    the end of the build."""
    stale = [f for f in sorted((out / "wavs").glob("*/")) if f.is_dir() and (
             not (f / FINISH_MARK).is_file() or (f / FINISH_MARK).read_text().strip() != audio.FINISH)]
    if not stale:
        return
    from tqdm import tqdm

    caches = [d for d in (out / "cache").glob("*/") if d.is_dir()]
    changed = 0
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for folder in tqdm(stale, unit="voice", desc=f"refinishing clips ({audio.FINISH})"):
            jobs = [(path, [cache / f"{folder.name}_{path.stem}.npy" for cache in caches])
                    for path in sorted(folder.glob("*.wav"))]
            changed += sum(pool.map(_refinish_clip, jobs, chunksize=16))
            mf.write_text_atomic(folder / FINISH_MARK, audio.FINISH + "\n")
    log(f"refinished {len(stale)} voice folders under {audio.FINISH}: {changed} clips changed, "
        "their cached features dropped")


def _refinish_clip(job: tuple[Path, list[Path]]) -> bool:
    """Worker: one finished clip through today's like_corpus; rewritten (atomically) only where its length
    changes by more than REFINISH_TOLERANCE (an older rule's margins, measured on a coarser grid, differ by
    less). Its cached features go first, so an interrupted build never leaves them beside new audio."""
    path, cached = job
    wav = audio.load_audio(path, audio.SAMPLE_RATE, max_seconds=None)
    again = audio.like_corpus(wav, audio.SAMPLE_RATE)
    if abs(len(again) - len(wav)) <= REFINISH_TOLERANCE * audio.SAMPLE_RATE:
        return False
    for stale in cached:
        stale.unlink(missing_ok=True)
    audio.save_audio(path, again, audio.SAMPLE_RATE)
    return True


def _group(rows, key) -> dict:
    groups = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return groups


def _write_outputs(out, rows, todo, failures, wall, profile, seed, voices, missing, workers) -> dict:
    done = []
    for row in rows:
        path = out / row["path"]
        if path.is_file():
            done.append({**row, "duration": round(sf.info(path).duration, 3)})
    frontend = TextFrontend.default()
    texts = sorted({r["normalized_text"] for r in done})
    phonemes = dict(zip(texts, frontend.units(texts))) if texts else {}
    for row in done:
        row["phonemes"] = phonemes[row["normalized_text"]] if frontend.mode == "phoneme" else None
    done.sort(key=lambda r: r["id"])
    mf.write_jsonl(out / "manifest.jsonl", done)
    _write_eval_lists(out, done)
    _write_speaker_lists(out, done)
    real = _write_real_speech(out)

    todo_ids = {t["id"] for t in todo}
    new_seconds = sum(r["duration"] for r in done if r["id"] in todo_ids)
    stats = defaultdict(lambda: {"utterances": 0, "hours": 0.0})
    for row in done:
        for key in (f"{row['speaker']}/{row['split']}", f"{row['speaker']}/all", f"all/{row['split']}", "all/all"):
            stats[key]["utterances"] += 1
            stats[key]["hours"] += row["duration"] / 3600
    report = {
        "profile": profile, "seed": seed, "workers": workers, "complete": len(done) + len(failures) >= len(rows),
        "planned": len(rows), "finished": len(done), "failed": failures,
        "synthesized_now": {"utterances": len(todo) - len(failures), "audio_hours": round(new_seconds / 3600, 3),
                            "wall_minutes": round(wall / 60, 2),
                            "audio_hours_per_wall_minute": round(new_seconds / 3600 / max(wall / 60, 1e-9), 3)},
        "voices": [asdict(v) | {"name": v.name} for v in voices], "missing_engines": missing,
        "text_mode": frontend.mode, "real_speech_clips": real,
        "stats": {k: {"utterances": v["utterances"], "hours": round(v["hours"], 3)} for k, v in sorted(stats.items())},
    }
    mf.write_text_atomic(out / "build.json", json.dumps(report, indent=2) + "\n")
    return report


PAIR_LISTS = {  # name -> (whose utterance is scored, whose other sentence is the enrollment)
    "pseudo_source": ("pseudo", "source"),  # how far a pseudo-speaker moved from its voice
    "pseudo_sibling": ("pseudo", "sibling"),  # how far two pseudo-speakers of one voice are apart
    "pseudo_self": ("pseudo", "pseudo"),  # the same-speaker baseline of both
    "source_self": ("source", "source"),  # the source voices on the same sentences: SIM and WER baseline
}


def _write_speaker_lists(out: Path, rows: list[dict]) -> None:
    """eval/<PAIR_LISTS>.jsonl over the test sentences every voice reads: each scored utterance
    (gt_wav) with an enrollment (prompt_wav) reading the next sentence, so SIM never rewards shared
    words. Evaluated with `--system gt --metrics sim,wer` (docs/corpus.md)."""
    scored = [r for r in rows if r["split"] in ("test", "heldout")]
    voices = _group(scored, key=lambda r: r["id"].rsplit("_", 1)[0])
    sentences = {name: {r["id"].rsplit("_", 1)[1]: r for r in voice_rows} for name, voice_rows in voices.items()}
    pseudo = sorted(name for name, voice_rows in voices.items() if "source_voice" in voice_rows[0])
    siblings = _group(pseudo, key=lambda name: voices[name][0]["source_voice"])
    for list_name, (who, enrolled) in PAIR_LISTS.items():
        entries = []
        for name in pseudo:
            source = voices[name][0]["source_voice"]
            sibling = next((s for s in siblings[source] if s != name), None)
            scored_voice = name if who == "pseudo" else source
            enrolled_voice = {"source": source, "sibling": sibling, "pseudo": name}[enrolled]
            if who == "source" and name != siblings[source][0]:
                continue  # a source is scored once, however many pseudo-speakers it has
            if enrolled_voice is None or scored_voice not in sentences or enrolled_voice not in sentences:
                continue
            shared = sorted(set(sentences[name]) & set(sentences[scored_voice]) & set(sentences[enrolled_voice]))
            for i, text_id in enumerate(shared):
                row, prompt = sentences[scored_voice][text_id], sentences[enrolled_voice][shared[(i + 1) % len(shared)]]
                if len(shared) > 1:
                    entries.append({"id": row["id"], "text": row["normalized_text"], "gt_wav": f"../{row['path']}",
                                    "prompt_wav": f"../{prompt['path']}", "prompt_text": prompt["normalized_text"],
                                    "speaker": scored_voice, "source_voice": source})
        mf.write_jsonl(out / "eval" / f"{list_name}.jsonl", entries)


def _write_eval_lists(out: Path, rows: list[dict]) -> None:
    """seed-tts-eval lists for zero-shot TTS: each test sentence, prompted by another
    test utterance of the same voice; ground truth is that voice reading the sentence. Held-out
    speakers make two lists: the engine voices' (tts_heldout) and the natural family's (tts_kokoro)."""
    for split, families, name in (("test", ("engine", "natural"), "tts_seen.lst"),
                                  ("heldout", ("engine",), "tts_heldout.lst"),
                                  ("heldout", ("natural",), "tts_kokoro.lst")):
        entries = []
        in_split = [r for r in rows if r["split"] == split and r["family"] in families]
        for voice_rows in _group(in_split, key=lambda r: r["id"].rsplit("_", 1)[0]).values():
            voice_rows.sort(key=lambda r: r["id"])
            if len(voice_rows) < 2:
                continue
            for i, row in enumerate(voice_rows):
                prompt = voice_rows[(i + 1) % len(voice_rows)]
                entries.append({"utt": row["id"], "prompt_text": prompt["normalized_text"],
                                "prompt_wav": f"../{prompt['path']}", "target_text": row["normalized_text"],
                                "gt_wav": f"../{row['path']}"})
        if entries:
            mf.write_seed_tts(out / "eval" / name, entries)
        else:  # a list with no speakers (no natural voices built) is no test set
            (out / "eval" / name).unlink(missing_ok=True)


ALSA_SOUNDS = Path("/usr/share/sounds/alsa")  # Debian alsa-utils: one person naming the speaker channels
ALSA_WORDS = ("Front_Center", "Front_Left", "Front_Right", "Rear_Center", "Rear_Left", "Rear_Right",
              "Side_Left", "Side_Right")


def _write_real_speech(out: Path) -> int:
    """eval/real_speech.jsonl: the recordings of people in assets/testsets/real_speech.jsonl (provenance
    in assets/audio/real/README.md), and alsa-utils' spoken channel names when installed, copied at
    22.05 kHz under real/. Never in a training split: they are not in manifest.jsonl."""
    source = ASSETS / "testsets" / "real_speech.jsonl"
    clips = [(row["id"], mf.resolve_audio(source, row["gt_wav"]), row["text"], row["speaker"])
             for row in mf.read_jsonl(source)]
    clips += [(f"alsa_{word.lower()}", ALSA_SOUNDS / f"{word}.wav", word.replace("_", " ").lower(), "alsa_speaker")
              for word in ALSA_WORDS if (ALSA_SOUNDS / f"{word}.wav").is_file()]
    rows = []
    for key, path, text, speaker in clips:
        target = out / "real" / f"{key}.wav"
        if not target.is_file():
            audio.save_audio(target, audio.load_audio(path, audio.SAMPLE_RATE, max_seconds=None), audio.SAMPLE_RATE)
        rows.append({"id": key, "text": text, "gt_wav": f"../real/{key}.wav", "speaker": speaker})
    mf.write_jsonl(out / "eval" / "real_speech.jsonl", rows)
    _write_real_tts(out, rows)
    return len(rows)


def _write_real_tts(out: Path, rows: list[dict]) -> None:
    """eval/tts_real.jsonl: zero-shot TTS on people's voices; each clip of a speaker with two or more is
    prompted by that speaker's next clip (with its transcript), and is the ground truth."""
    entries = []
    for speaker_rows in _group(rows, key=lambda r: r["speaker"]).values():
        speaker_rows = sorted(speaker_rows, key=lambda r: r["id"])
        if len(speaker_rows) < 2:
            continue
        for i, row in enumerate(speaker_rows):
            prompt = speaker_rows[(i + 1) % len(speaker_rows)]
            entries.append({**row, "prompt_wav": prompt["gt_wav"], "prompt_text": prompt["text"]})
    mf.write_jsonl(out / "eval" / "tts_real.jsonl", entries)


def export_testset(corpus_dir: str | Path, list_name: str, out_manifest: str | Path, per_speaker: int = 3,
                   rate: int = 16000) -> int:
    """A compact, self-contained copy of a corpus zero-shot list (eval/<list_name>.lst) for shipping: the first
    `per_speaker` sentences of each speaker as 16-bit FLAC at `rate` beside the new JSONL manifest, each
    prompted by the speaker's next chosen clip. Rows keep their speaker, engine voice and licence."""
    corpus_dir, out_manifest = Path(corpus_dir), Path(out_manifest)
    source = corpus_dir / "eval" / f"{list_name}.lst"
    if not source.is_file():
        raise ValueError(f"no list {source} (lists: {', '.join(p.stem for p in sorted(source.parent.glob('*.lst')))})")
    if per_speaker < 2:
        raise ValueError(f"--per-speaker must be at least 2 (a clip is prompted by another), got {per_speaker}")
    rows = {r["id"]: r for r in mf.read_jsonl(corpus_dir / "manifest.jsonl")}
    listed = [rows[entry["utt"]] for entry in mf.read_seed_tts(source)]
    entries = []
    for speaker_rows in _group(listed, key=lambda r: r["speaker"]).values():
        chosen = sorted(speaker_rows, key=lambda r: r["id"])[:per_speaker]
        if len(chosen) < 2:
            continue
        clips = {}
        for row in chosen:
            target = out_manifest.parent / out_manifest.stem / row["speaker"] / f"{Path(row['path']).stem}.flac"
            wav = audio.load_audio(corpus_dir / row["path"], rate, max_seconds=None)
            audio.save_audio(target, wav, rate)
            clips[row["id"]] = target.relative_to(out_manifest.parent).as_posix()
        for i, row in enumerate(chosen):
            prompt = chosen[(i + 1) % len(chosen)]
            entries.append({"id": row["id"], "text": row["normalized_text"], "gt_wav": clips[row["id"]],
                            "prompt_wav": clips[prompt["id"]], "prompt_text": prompt["normalized_text"],
                            "speaker": row["speaker"], "voice": f"{row['engine']}:{row['voice']}",
                            **({"blend": row["blend"]} if "blend" in row else {}),
                            **({"transform": row["transform"]} if "transform" in row else {}),
                            "licence": row.get("licence", LICENCES[row["engine"]])})
    mf.write_jsonl(out_manifest, entries)
    return len(entries)


def summary_table(report: dict) -> str:
    stats = report["stats"]
    speakers = sorted({k.split("/")[0] for k in stats if not k.startswith("all/")})
    splits = ["train", "valid", "test", "heldout"]
    lines = ["| speaker | " + " | ".join(splits) + " | total |", "|---" * (len(splits) + 2) + "|"]
    for speaker in speakers + ["all"]:
        cells = []
        for split in splits + ["all"]:
            s = stats.get(f"{speaker}/{split}")
            cells.append(f"{s['hours']:.2f} h / {s['utterances']}" if s else "-")
        lines.append(f"| {speaker} | " + " | ".join(cells) + " |")
    now = report["synthesized_now"]
    lines.append(f"\nsynthesized {now['audio_hours']:.2f} h in {now['wall_minutes']:.1f} min with "
                 f"{report['workers']} workers: {now['audio_hours_per_wall_minute']:.3f} h of audio per minute")
    return "\n".join(lines)
