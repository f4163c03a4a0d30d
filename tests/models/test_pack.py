"""Packing a corpus's integer caches into one file and back (models/data/pack.py): what a GPU machine without
the audio trains from."""

import json

import numpy as np
import pytest
import torch

from models.data.dataset import Feature, SpeechDataset, Stream
from models.data.pack import pack, unpack
from studio.cli import main


def corpus(tmp_path, count: int = 3):
    """A corpus folder with no audio: manifest rows and two integer caches (8 codec layers, 1 semantic)."""
    rng = np.random.default_rng(0)
    rows, out = [], tmp_path / "corpus"
    for i in range(count):
        split = "valid" if i == count - 1 else "train"
        rows.append({"id": f"u{i}", "speaker": "s", "split": split, "duration": 1.0 + i, "path": f"wavs/u{i}.wav",
                     "text": "hi", "normalized_text": "hi"})
        for name, shape in (("tokens-x", (8, 20 + i)), ("semantic", (1, 25 + i))):
            (out / "cache" / name).mkdir(parents=True, exist_ok=True)
            np.save(out / "cache" / name / f"u{i}.npy", rng.integers(0, 1024, shape).astype(np.int32))
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, rows


def test_a_packed_corpus_unpacks_to_the_same_ids_and_trains_without_audio(tmp_path):
    source, rows = corpus(tmp_path)
    summary = pack(source, {"tokens-x": 4, "semantic": None}, tmp_path / "p.npz")
    assert summary["rows"] == 3 and summary["bytes"] > 0
    unpack(tmp_path / "p.npz", tmp_path / "copy")
    for row in rows:
        original = np.load(source / "cache" / "tokens-x" / f"{row['id']}.npy")
        copied = np.load(tmp_path / "copy" / "cache" / "tokens-x" / f"{row['id']}.npy")
        assert copied.dtype == np.int32 and np.array_equal(copied, original[:4])  # the first 4 layers kept
        assert np.array_equal(np.load(tmp_path / "copy" / "cache" / "semantic" / f"{row['id']}.npy"),
                              np.load(source / "cache" / "semantic" / f"{row['id']}.npy"))

    def no_audio(wav):
        raise AssertionError("the unpacked corpus must be read from its caches")

    data = SpeechDataset(tmp_path / "copy" / "manifest.jsonl", ("train",),
                         feature=Feature("tokens-x", no_audio, 21.5, integer=True),
                         cache_dir=tmp_path / "copy" / "cache",
                         streams={"semantic": Stream(Feature("semantic", no_audio, 25.0, integer=True))})
    item = data[1]
    assert item["features"].shape == (4, 21) and item["semantic"].dtype == torch.long


def test_packing_names_what_is_missing_or_out_of_range(tmp_path, capsys):
    source, _ = corpus(tmp_path)
    (source / "cache" / "semantic" / "u1.npy").unlink()
    with pytest.raises(ValueError, match="1 of 3 utterances are not cached"):
        pack(source, {"semantic": None}, tmp_path / "p.npz")
    with pytest.raises(ValueError, match="channels must be 1..8"):
        pack(source, {"tokens-x": 9}, tmp_path / "p.npz")
    np.save(source / "cache" / "tokens-x" / "u0.npy", np.full((8, 20), 70000, dtype=np.int32))
    with pytest.raises(ValueError, match="uint16"):
        pack(source, {"tokens-x": None}, tmp_path / "p.npz")
    assert not (tmp_path / "p.npz").exists()  # nothing half-written
    assert main(["corpus", "pack", "--corpus", str(source), "--feature", "tokens-x:x", "--out",
                 str(tmp_path / "p.npz")]) == 2
    assert "CHANNELS must be a whole number" in capsys.readouterr().err


def test_the_cli_packs_and_unpacks(tmp_path, capsys):
    source, _ = corpus(tmp_path)
    assert main(["corpus", "pack", "--corpus", str(source), "--feature", "tokens-x:2", "--feature", "semantic",
                 "--splits", "train", "--out", str(tmp_path / "p.npz")]) == 0
    assert "packed 2 utterances' tokens-x, semantic" in capsys.readouterr().out
    assert main(["corpus", "unpack", str(tmp_path / "p.npz"), "--out", str(tmp_path / "copy")]) == 0
    assert len((tmp_path / "copy" / "manifest.jsonl").read_text().splitlines()) == 2
