"""A corpus's integer feature caches (codec tokens, semantic tokens) as one compact file, and back.

What a lent GPU machine trains from: it has no corpus audio, only what is carried (at most 64 MiB). `pack`
writes the manifest rows and, per feature, every utterance's ids concatenated along time as uint16, with the
option to keep only a feature's first channels (the lower codec layers an acoustic decoder generates).
`unpack` writes them back as a corpus folder (manifest.jsonl and cache/<feature>/<id>.npy, the trainer's own
cache layout), so `speech-studio train` runs there unchanged, never touching audio. No pickles: arrays and
JSON text only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.data import manifest as mf
from models.files import atomic_path

IDS_MAX = np.iinfo(np.uint16).max


def pack(corpus: str | Path, features: dict[str, int | None], out: str | Path,
         splits: tuple[str, ...] = ("train", "valid")) -> dict:
    """corpus folder, {cache folder name: channels kept (None: all)} -> `out` (.npz). Every row of `splits`
    must have every feature cached. Returns a summary (rows, bytes)."""
    corpus = Path(corpus)
    rows = [r for r in mf.read_jsonl(corpus / "manifest.jsonl") if r["split"] in splits]
    if not rows:
        raise ValueError(f"{corpus}: no utterances in split(s) {', '.join(splits)}")
    arrays = {"manifest": np.frombuffer(json.dumps(rows).encode(), dtype=np.uint8)}
    for name, channels in features.items():
        folder = corpus / "cache" / name
        missing = [r["id"] for r in rows if not (folder / f"{r['id']}.npy").is_file()]
        if missing:
            raise ValueError(f"{folder}: {len(missing)} of {len(rows)} utterances are not cached (first: "
                             f"{missing[0]}); run the training or cache command that computes them first")
        values = [np.load(folder / f"{r['id']}.npy", allow_pickle=False) for r in rows]
        if any(v.ndim != 2 for v in values):
            raise ValueError(f"{name}: cached features must be (channels, frames)")
        if channels is not None:
            if not 1 <= channels <= values[0].shape[0]:
                raise ValueError(f"{name}: channels must be 1..{values[0].shape[0]}, not {channels}")
            values = [v[:channels] for v in values]
        joined = np.concatenate(values, axis=1)
        if joined.min() < 0 or joined.max() > IDS_MAX:
            raise ValueError(f"{name}: ids must lie in 0..{IDS_MAX} to pack as uint16")
        arrays[f"{name}/ids"] = joined.astype(np.uint16)
        arrays[f"{name}/lengths"] = np.array([v.shape[1] for v in values], dtype=np.int64)
    out = Path(out)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return {"rows": len(rows), "features": list(features), "bytes": out.stat().st_size}


def unpack(packed: str | Path, out: str | Path) -> dict:
    """A packed file -> a corpus folder `out` (manifest.jsonl, cache/<feature>/<id>.npy as int32)."""
    out = Path(out)
    with np.load(packed, allow_pickle=False) as data:
        rows = json.loads(data["manifest"].tobytes().decode())
        names = sorted({key.rsplit("/", 1)[0] for key in data.files if "/" in key})
        for name in names:
            ids, lengths = data[f"{name}/ids"], data[f"{name}/lengths"]
            if len(lengths) != len(rows) or lengths.sum() != ids.shape[1]:
                raise ValueError(f"{packed}: {name}'s lengths do not match its rows")
            folder = out / "cache" / name
            folder.mkdir(parents=True, exist_ok=True)
            ends = np.cumsum(lengths)
            for row, end, length in zip(rows, ends, lengths):
                value = ids[:, end - length:end].astype(np.int32)
                with atomic_path(folder / f"{row['id']}.npy") as tmp:
                    np.save(tmp, value)
    with atomic_path(out / "manifest.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"rows": len(rows), "features": names}
