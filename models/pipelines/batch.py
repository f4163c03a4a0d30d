"""Batch synthesis: many utterances from a text file or JSONL manifest, the model loaded once, each
finished one recorded, so a second run resumes where the first stopped."""

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


def tts_batch(rows: list[dict], out_dir: str, model: str = "sled", seed: int | None = None, fmt: str = ".wav",
              progress: Callable[[Iterator], Iterator] | None = None, **settings) -> dict:
    """Synthesize every row into out_dir/<id><fmt>, the model loaded once; each finished utterance
    appends its settings, seed and timings to out_dir/synthesis.jsonl. Run again, it resumes: rows
    whose audio and record exist are skipped. Row i's seed is its own `seed`, else seed + i; without
    `seed`, a base seed is drawn once and kept in out_dir/batch_seed, so a resumed batch goes on with it."""
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
