import json
from pathlib import Path

import pytest
import torch

from models import registry


@registry.register("tiny_test_model", role="latent_codec")
def build_tiny(config: dict) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(config["dim"], config["dim"]), torch.nn.Tanh())


CARD = {"data": "none (unit test)", "steps": 0, "wall_time_s": 0.0, "device": "cpu", "metrics": {"loss": 1.0}}


def test_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_tiny({"dim": 4})
    folder = registry.save_checkpoint(model, {"model": "tiny_test_model", "dim": 4}, CARD, tmp_path / "tiny")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded, config, card = registry.load_checkpoint(folder, device="cpu")
    x = torch.randn(3, 4)
    assert torch.equal(loaded(x), model(x))
    assert config["dim"] == 4 and card["steps"] == 0 and card["metrics"] == {"loss": 1.0}
    assert card["model"] == "tiny_test_model"


def test_overwrite_is_atomic_and_complete(tmp_path):
    folder = tmp_path / "tiny"
    registry.save_checkpoint(build_tiny({"dim": 2}), {"model": "tiny_test_model", "dim": 2}, CARD, folder)
    registry.save_checkpoint(build_tiny({"dim": 3}), {"model": "tiny_test_model", "dim": 3}, CARD, folder)
    assert json.loads((folder / "config.json").read_text())["dim"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_card_requires_its_fields(tmp_path):
    with pytest.raises(ValueError, match="lacks steps"):
        registry.save_checkpoint(build_tiny({"dim": 2}), {"model": "tiny_test_model", "dim": 2},
                                 {k: v for k, v in CARD.items() if k != "steps"}, tmp_path / "x")


def test_name_resolves_under_checkpoint_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "CHECKPOINT_DIR", tmp_path)
    registry.save_checkpoint(build_tiny({"dim": 2}), {"model": "tiny_test_model", "dim": 2}, CARD, tmp_path / "mine")
    assert registry.resolve("mine") == tmp_path / "mine"
    assert registry.list_checkpoints() == ["mine"]
    assert registry.list_checkpoints("other_kind") == []
    first = registry.load_model("mine", device="cpu")
    assert registry.load_model("mine", device="cpu") is first  # resident, loaded once
    registry.release("model")


def test_resident_models_beyond_the_limit_are_released_least_recently_used_first(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "CHECKPOINT_DIR", tmp_path)
    monkeypatch.setattr(registry, "MAX_RESIDENT_MODELS", 2)
    registry.release("model")
    for name in ("a", "b", "c"):
        registry.save_checkpoint(build_tiny({"dim": 2}), {"model": "tiny_test_model", "dim": 2}, CARD, tmp_path / name)
    a = registry.load_model("a", "cpu")
    registry.load_model("b", "cpu")
    assert registry.load_model("a", "cpu") is a  # used again: now b is the least recent
    registry.load_model("c", "cpu")
    loaded = {Path(key[1]).name for key in registry._RESIDENT if key[0] == "model"}
    assert loaded == {"a", "c"}
    assert registry.load_model("b", "cpu") is not None and registry.load_model("a", "cpu") is not a  # reloaded
    registry.release("model")


def test_offline_error_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "CHECKPOINT_DIR", tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(registry.CheckpointNotFound) as info:
        registry.resolve("someone/not-a-real-speech-model")
    message = str(info.value)
    assert str(tmp_path / "someone/not-a-real-speech-model" / "model.safetensors") in message
    assert "could not be fetched" in message
    with pytest.raises(registry.CheckpointNotFound, match="missing file"):
        registry.resolve("no_such_local_name")


def test_unknown_builder():
    with pytest.raises(KeyError, match="No model builder named 'nope'"):
        registry.builder("nope")


def test_pick_device(monkeypatch):
    monkeypatch.delenv("STUDIO_DEVICE", raising=False)
    assert registry.pick_device("cpu") == "cpu"
    monkeypatch.setenv("STUDIO_DEVICE", "cpu")
    assert registry.pick_device() == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            registry.pick_device("cuda")
