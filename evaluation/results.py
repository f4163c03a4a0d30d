"""The results files of an evaluation run: one JSON line per unit, appended and flushed, under
`<run>/results/shard-I-of-N.jsonl` (see evaluation.runner), and how they are read back. The
runner writes them; reports, sweeps and the studio read them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from models.data.manifest import read_text

RTF = "rtf"  # the row metric written while generating


def read_results(out: str | os.PathLike) -> list[dict]:
    """Every row of every shard file; a torn last line (a crash mid-write) is ignored."""
    rows = []
    for path in sorted((Path(out) / "results").glob("shard-*.jsonl")):
        for number, line in enumerate(read_text(path).splitlines(), start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not (isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("system", "key", "metric"))
                    and (row.get("values") is None or isinstance(row["values"], dict))):
                raise ValueError(f"{path}:{number}: not a results row (system, key, metric, values)")
            rows.append(row)
    return rows


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per (system, key, metric), the last written (a rerun overrides)."""
    unique = {}
    for row in rows:
        unique[(row["system"], row["key"], row["metric"])] = row
    return list(unique.values())


class ResultWriter:
    """Appends one JSON line per unit and flushes it to disk before the next unit starts."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        torn = path.is_file() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
        self.file = open(path, "a")
        if torn:  # a crash cut the last line: end it, so the next row starts on its own line
            self.file.write("\n")

    def write(self, row: dict) -> None:
        self.file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()
