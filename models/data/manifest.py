"""Manifests: JSONL rows (one utterance each) and the community list formats.

Audio paths inside a manifest are relative to the manifest's own folder, so a corpus can
be moved or copied whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from models.files import write_text_atomic

SEED_TTS_FIELDS = ("utt", "prompt_text", "prompt_wav", "target_text", "gt_wav")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_text(path: str | os.PathLike) -> str:
    """A text file's contents; a file that is not UTF-8 is one clear error naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text (byte {error.start} cannot be decoded)") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSONL file; a line that is not a JSON object is an error naming file and line."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def resolve_audio(manifest: str | os.PathLike, relative: str) -> Path:
    """An audio path from a manifest, resolved against the manifest's folder."""
    return (Path(manifest).resolve().parent / relative).resolve()


def write_seed_tts(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """seed-tts-eval list: `utt|prompt_text|prompt_wav|target_text[|gt_wav]` per line."""
    lines = []
    for row in rows:
        fields = [row[k] for k in SEED_TTS_FIELDS if row.get(k) is not None]
        if any("|" in str(f) or "\n" in str(f) for f in fields):
            raise ValueError(f"{row['utt']}: a field contains '|' or a newline")
        lines.append("|".join(str(f) for f in fields))
    return write_text_atomic(path, "\n".join(lines) + "\n")


def read_seed_tts(path: str | os.PathLike) -> list[dict]:
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) not in (4, 5):
            raise ValueError(f"{path}:{number}: expected 4 or 5 '|'-separated fields, got {len(fields)}")
        rows.append(dict(zip(SEED_TTS_FIELDS, fields)))
    return rows
