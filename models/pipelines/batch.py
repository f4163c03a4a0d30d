"""Batch synthesis, and batch speech to speech: many utterances from a text file, a folder of recordings
or a JSONL manifest, the model loaded once, each finished one recorded beside the audio, so a second run
resumes where the first stopped."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Callable, Iterator

from models import audio
from models.data import manifest as mf
from models.files import write_text_atomic
from models.pipelines.common import MAX_SEED, check_seed
from models.pipelines.synthesis import MAX_REFERENCE_UPLOAD_SECONDS, tts

BATCH_RECORD = "synthesis.jsonl"  # one line per finished utterance, beside the audio
SPEECH_RECORD = "speech.jsonl"  # the same for a speech-to-speech batch
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
INPUT_FIELDS, VOICE_FIELDS = ("input", "noisy", "mixture", "source"), ("voice", "reference", "enrollment")


def read_tts_lines(path: str) -> list[dict]:
    """Utterances to synthesize: a text file (one sentence or paragraph per non-empty line, ids
    0001, 0002, ...) or a JSONL manifest (rows with `text`, optional `id`, `ref`, `ref_text`, `seed`)."""
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


def read_speech_inputs(path: str, voice: str | None = None) -> list[dict]:
    """Recordings to transform: every audio file of a folder (id = its name), or a JSONL manifest (rows with
    the recording under `input`, `noisy`, `mixture` or `source`, optional `id`, `seed`, and the voice clip under
    `voice`, `reference` or `enrollment`). `voice` is the clip of rows that name none."""
    folder = Path(path)
    if folder.is_dir():
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in AUDIO_SUFFIXES)
        rows = [{"id": f.stem, "input": str(f)} for f in files]
        if len({r["id"] for r in rows}) != len(rows):
            raise ValueError(f"{path}: two recordings share a name (a.wav and a.flac): their outputs would too")
    else:
        rows = []
        for number, row in enumerate(mf.read_jsonl(path), start=1):
            given = next((row[f] for f in INPUT_FIELDS if row.get(f)), None)
            if not isinstance(given, str):
                raise ValueError(f"{path}: row {number} names no recording ({', '.join(INPUT_FIELDS)})")
            clip = next((row[f] for f in VOICE_FIELDS if row.get(f)), None)
            rows.append({"id": str(row.get("id") or f"{number:04d}"), "input": str(mf.resolve_audio(path, given)),
                         "voice": str(mf.resolve_audio(path, clip)) if clip else None, "seed": row.get("seed")})
    if not rows:
        raise ValueError(f"{path}: no recordings (audio files {', '.join(AUDIO_SUFFIXES)}, or a JSONL manifest)")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids) or any(not i or "/" in i or i.startswith(".") for i in ids):
        raise ValueError(f"{path}: ids must be unique file names")
    for row in rows:
        row["voice"] = row.get("voice") or voice
    return rows


def _finished(record: Path) -> set[str]:
    """The ids a batch's record lists (a line cut short by a crash is redone)."""
    done = set()
    if record.is_file():
        for line in record.read_text().splitlines():
            try:
                done.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def _base_seed(out: Path, seed: int | None, rows: int) -> int:
    """The batch's base seed: `seed`, else the one a previous run drew (out/batch_seed), else a new draw."""
    kept = out / "batch_seed"
    if seed is None and kept.is_file():
        base = check_seed(kept.read_text().strip())
    else:
        base = random.randrange(2**31) if seed is None else seed
        write_text_atomic(kept, f"{base}\n")
    if base + rows - 1 > MAX_SEED:  # before any row is written
        raise ValueError(f"the seed {base} + {rows - 1} lines goes past {MAX_SEED}: choose a smaller --seed")
    return base


def _append(record: Path, entry: dict) -> None:
    with open(record, "a") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def speech_batch(task: str, rows: list[dict], out_dir: str, model: str | None = None, seed: int | None = None,
                 fmt: str = ".wav", progress: Callable[[Iterator], Iterator] | None = None, **settings) -> dict:
    """Transform every row's recording (convert, enhance or extract; with its voice clip) into out_dir/<id><fmt>,
    the model loaded once; each finished one appends its settings to out_dir/speech.jsonl, and a second run
    resumes. Seeds as in `tts_batch`."""
    from models.pipelines import speech

    if task != "enhance" and (missing := [r["id"] for r in rows if not r.get("voice")]):
        raise ValueError(f"{speech.TASK_NAMES[task]} needs a voice clip for every recording: {missing[0]} has "
                         "none (give --voice, or a voice column in the manifest)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = out / SPEECH_RECORD
    done = _finished(record)
    base = _base_seed(out, seed, len(rows))
    todo = [(i, r) for i, r in enumerate(rows) if not (r["id"] in done and (out / f"{r['id']}{fmt}").is_file())]
    for index, row in (progress or iter)(todo):
        wav = audio.load_audio(row["input"], audio.SAMPLE_RATE)
        voice = (audio.load_audio(row["voice"], audio.SAMPLE_RATE), audio.SAMPLE_RATE) if task != "enhance" else ()
        row_seed = check_seed(row["seed"]) if row.get("seed") is not None else base + index
        result, info = getattr(speech, task)(wav, audio.SAMPLE_RATE, *voice, model=model, seed=row_seed, **settings)
        path = audio.save_audio(out / f"{row['id']}{fmt}", result)
        _append(record, {"id": row["id"], "input": row["input"], "voice": row.get("voice"), "audio": path.name, **info})
    return {"rows": len(rows), "transformed": len(todo), "skipped": len(rows) - len(todo), "record": str(record),
            "seed": base}


def tts_batch(rows: list[dict], out_dir: str, model: str = "sled", seed: int | None = None, fmt: str = ".wav",
              progress: Callable[[Iterator], Iterator] | None = None, **settings) -> dict:
    """Synthesize every row into out_dir/<id><fmt>, the model loaded once; each finished utterance
    appends its settings, seed and timings to out_dir/synthesis.jsonl. Run again, it resumes: rows
    whose audio and record exist are skipped. Row i's seed is its own `seed`, else seed + i; without
    `seed`, a base seed is drawn once and kept in out_dir/batch_seed, so a resumed batch goes on with it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = out / BATCH_RECORD
    done = _finished(record)
    base = _base_seed(out, seed, len(rows))
    todo = [(i, r) for i, r in enumerate(rows) if not (str(r["id"]) in done and (out / f"{r['id']}{fmt}").is_file())]
    for index, row in (progress or iter)(todo):
        ref = None
        if row.get("ref"):
            ref = audio.load_audio(row["ref"], audio.SAMPLE_RATE, max_seconds=MAX_REFERENCE_UPLOAD_SECONDS)
        row_seed = check_seed(row["seed"]) if row.get("seed") is not None else base + index
        wav, info = tts(row["text"], model=model, ref_wav=ref, ref_sr=audio.SAMPLE_RATE, ref_text=row.get("ref_text"),
                        seed=row_seed, **settings)
        path = audio.save_audio(out / f"{row['id']}{fmt}", wav)
        _append(record, {"id": str(row["id"]), "text": row["text"], "audio": path.name, "ref": row.get("ref"), **info})
    return {"rows": len(rows), "synthesized": len(todo), "skipped": len(rows) - len(todo), "record": str(record),
            "seed": base}
