import numpy as np
import pytest
import torch

from models.data.dataset import MEL, SpeechDataset, collate


def test_dataset_items_and_cache(mini, tmp_path):
    manifest = mini[0] / "manifest.jsonl"
    dataset = SpeechDataset(manifest, splits=("train",), cache_dir=tmp_path / "cache")
    item = dataset[0]
    assert item["text"].dtype == torch.long and len(item["text"]) > 3
    assert item["features"].shape[0] == 80
    assert abs(item["features"].shape[1] - dataset.frames(0)) <= 2  # manifest duration predicts length
    cached = tmp_path / "cache" / "mel" / f"{item['id']}.npy"
    assert cached.is_file()
    again = dataset[0]["features"]
    assert torch.allclose(again, item["features"], atol=2e-2)  # fp16 cache
    assert np.load(cached, allow_pickle=False).dtype == np.float16
    assert {dataset.rows[i]["split"] for i in range(len(dataset))} == {"train"}


def test_held_out_split_selects_unseen_speakers(mini):
    manifest = mini[0] / "manifest.jsonl"
    train = SpeechDataset(manifest, splits=("train",))
    heldout = SpeechDataset(manifest, splits=("heldout",))
    assert not {r["speaker"] for r in train.rows} & {r["speaker"] for r in heldout.rows}
    assert train.speakers == heldout.speakers  # one speaker index table for every split
    with pytest.raises(ValueError, match="no utterances"):
        SpeechDataset(manifest, splits=("nonexistent",))


def test_collate_pads_and_reports_lengths(mini):
    dataset = SpeechDataset(mini[0] / "manifest.jsonl", splits=("train", "valid"))
    batch = collate([dataset[i] for i in range(min(8, len(dataset)))])
    assert batch["features"].shape[0] == len(batch["ids"]) == batch["text"].shape[0]
    assert batch["features"].shape[2] == batch["feature_lengths"].max()
    assert batch["text"].shape[1] == batch["text_lengths"].max()


def test_mel_feature_rate():
    assert MEL.frames_per_second == pytest.approx(22050 / 256)


def test_integer_features_are_cached_exactly_whatever_the_vocabulary(mini, tmp_path):
    """Token ids went through the fp16 cache, exact only up to 2048."""
    from models.data.dataset import Feature

    ids = Feature("ids", lambda wav: torch.full((1, 5), 70_001), 10.0, source=None, integer=True)
    dataset = SpeechDataset(mini[0] / "manifest.jsonl", splits=("train",), feature=ids, cache_dir=tmp_path)
    first, again = dataset[0]["features"], dataset[0]["features"]  # computed, then read from the cache
    assert first.dtype == again.dtype == torch.int64 and int(first.max()) == int(again.max()) == 70_001
    assert np.load(tmp_path / "ids" / f"{dataset.rows[0]['id']}.npy").dtype == np.int32
