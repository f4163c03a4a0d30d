import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from evaluation.scorers import training_scorers
from models import registry
from models.training import (
    TrainConfig,
    Trainer,
    crop_batch,
    epoch_batches,
    get_task,
    initialize,
    latest_checkpoint,
    load_config,
)
from studio.cli import main

REPO = registry.REPO_ROOT
TINY = REPO / "models" / "configs" / "flow_vae_tiny.yaml"


def train(corpus, out, steps=6, stop=None, resume=False, **train_overrides):
    config = load_config(TINY)
    config["train"].update({"steps": steps, **train_overrides})
    return Trainer("flow_vae", config, data=str(corpus), out=str(out), resume=resume, device="cpu",
                   max_steps=stop, log=lambda _: None, scorers=training_scorers()).run()


def weights(run, step):
    return load_file(str(run / "checkpoints" / f"step-{step}" / "model.safetensors"))


def test_configs_are_data_and_refuse_unknown_settings(tmp_path):
    config = load_config(REPO / "models" / "configs" / "flow_vae.yaml")
    assert config["model"]["latent_dim"] == 64 and TrainConfig.from_dict(config["train"]).steps > 1000
    with pytest.raises(ValueError, match="train settings: unknown setting 'stpes'"):
        TrainConfig.from_dict({"stpes": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: 3}\n")
    with pytest.raises(ValueError, match="model:"):
        load_config(bad)
    with pytest.raises(ValueError, match="unknown model to train 'sledd'"):
        get_task("sledd", {})



@pytest.mark.parametrize("path", sorted((REPO / "models" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    config = load_config(path)
    TrainConfig.from_dict(config["train"])
    get_task(config["model"]["model"], config["model"])  # the task validates its model settings


def test_batches_shard_one_permutation_across_ranks():
    single = epoch_batches(10, 4, epoch=0, seed=0, rank=0, world=1)
    halves = [epoch_batches(10, 2, epoch=0, seed=0, rank=r, world=2) for r in range(2)]
    assert halves[0][0] + halves[1][0] == single[0]
    assert epoch_batches(10, 4, 1, 0, 0, 1) != single  # reshuffled per epoch
    lengths = [7, 1, 9, 3, 5, 2, 8, 4, 6, 10, 11, 0]
    bucketed = epoch_batches(12, 3, 0, 0, 0, 1, lengths)
    assert sorted(i for b in bucketed for i in b) == list(range(12))
    assert all(max(lengths[i] for i in b) - min(lengths[i] for i in b) == 2 for b in bucketed)  # neighbours
    speakers = ["a", "b", "c", "a", "b", "c", "a", "b", "c", "a", "b", "c"]
    for sizes in (None, lengths):
        paired = epoch_batches(12, 4, 0, 0, 0, 1, sizes, speakers)
        assert len(paired) == 3 and sorted(i for b in paired for i in b) == list(range(12))
        assert all(speakers[b[k]] == speakers[b[k + 1]] for b in paired for k in (0, 2))
    odd = epoch_batches(12, 4, 0, 0, 0, 1, None, ["a"] * 3 + ["b"] * 9)  # a's and b's odd ones are paired
    assert len(odd) == 3 and sorted(i for b in odd for i in b) == list(range(12))
    with pytest.raises(ValueError, match="even batch_size"):
        epoch_batches(12, 3, 0, 0, 0, 1, None, speakers)


def test_crops_are_within_each_item():
    features = torch.arange(3 * 1 * 50, dtype=torch.float32).view(3, 1, 50)
    batch = crop_batch({"features": features, "feature_lengths": torch.tensor([50, 20, 10])}, 16,
                       torch.Generator().manual_seed(0))
    assert batch["features"].shape == (3, 1, 16) and batch["feature_lengths"].tolist() == [16, 16, 10]
    first = batch["features"][0, 0]
    assert torch.equal(first, torch.arange(first[0], first[0] + 16))  # a contiguous window


def test_resume_continues_exactly_from_the_saved_step(mini, tmp_path):
    corpus = mini[0]
    train(corpus, tmp_path / "whole", steps=6, checkpoint_every=3)
    state = train(corpus, tmp_path / "split", steps=6, stop=3, checkpoint_every=3)
    assert state["step"] == 3 and latest_checkpoint(tmp_path / "split").name == "step-3"
    with pytest.raises(ValueError, match="--resume"):
        train(corpus, tmp_path / "split", steps=6)
    assert train(corpus, tmp_path / "split", steps=6, resume=True, checkpoint_every=3)["step"] == 6
    whole, split = weights(tmp_path / "whole", 6), weights(tmp_path / "split", 6)
    assert all(torch.allclose(whole[k], split[k], atol=1e-6) for k in whole)
    rows = list(csv.DictReader(open(tmp_path / "split" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    card = registry.read_card(tmp_path / "split" / "export" / "README.md")
    assert card["steps"] == 6 and "pesq_wb" in card["metrics"] and card["device"].startswith("cpu")
    assert list((tmp_path / "split" / "samples" / "step-6").glob("*.wav"))


def test_fine_tune_starts_from_a_checkpoint_and_leaves_frozen_parts_alone(mini, tmp_path):
    corpus = mini[0]
    train(corpus, tmp_path / "base", steps=2)
    base = load_file(str(tmp_path / "base" / "export" / "model.safetensors"))
    train(corpus, tmp_path / "ft", steps=2, init_from=str(tmp_path / "base" / "export"), freeze=["encoder", "flow"])
    tuned = load_file(str(tmp_path / "ft" / "export" / "model.safetensors"))
    assert all(torch.equal(base[k], tuned[k]) for k in base if k.startswith(("encoder.", "flow.")))
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.startswith("decoder."))
    card = registry.read_card(tmp_path / "ft" / "export" / "README.md")
    assert card["fine_tuned_from"]["steps"] == 2 and card["fine_tuned_from"]["frozen"] == ["encoder", "flow"]
    with pytest.raises(ValueError, match="matches no parameter"):
        train(corpus, tmp_path / "bad", steps=1, freeze=["nothing"])


def test_init_modules_copies_only_the_named_parts_and_refuses_a_misfit(tmp_path):
    source = torch.nn.ModuleDict({"transformer": torch.nn.Linear(3, 3), "head": torch.nn.Linear(3, 2)})
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    target = torch.nn.ModuleDict({"transformer": torch.nn.Linear(3, 3), "head": torch.nn.Linear(3, 4)})
    head = target["head"].weight.detach().clone()
    initialize(target, tmp_path / "model.safetensors", ("transformer",))
    assert torch.equal(target["transformer"].weight, source["transformer"].weight)
    assert torch.equal(target["head"].weight, head)
    with pytest.raises(ValueError, match="does not fit"):
        initialize(target, tmp_path / "model.safetensors", ("head",))
    with pytest.raises(ValueError, match="matches no parameter"):
        initialize(target, tmp_path / "model.safetensors", ("trans",))  # a name prefix, not a module
    with pytest.raises(ValueError, match="set init_from"):
        TrainConfig.from_dict({"init_modules": ["transformer"]})


def test_torchrun_two_processes_match_a_single_process_step(mini, tmp_path):
    """Two gloo ranks, batch 2 each, against one process with both ranks' items (batch 4)."""
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "studio", "--device", "cpu", "train", "flow_vae", "--config", str(TINY), "--data",
               str(mini[0]), "--out", str(run), "--steps", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    ddp = weights(run, 1)

    # The same step by hand: each rank's batch, loss and gradient; DDP averages the gradients.
    config = load_config(TINY)
    settings = TrainConfig.from_dict({**config["train"], "steps": 1})
    task = get_task("flow_vae", config["model"])
    from models.data.dataset import MEL, SpeechDataset, collate

    dataset = SpeechDataset(mini[0] / "manifest.jsonl", ("train",), feature=MEL,
                            cache_dir=mini[0] / "cache", max_seconds=settings.max_seconds)
    torch.manual_seed(settings.seed)
    model = task.build()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    gradients = []
    for rank in range(2):
        model.load_state_dict(initial)
        torch.manual_seed(settings.seed + rank)
        task.build()  # each rank builds its own copy first (DDP then broadcasts rank 0's weights)
        batch_items = epoch_batches(len(dataset), settings.batch_size, 0, settings.seed, rank, 2)[0]
        crops = torch.Generator().manual_seed((settings.seed * 1_000_003 + 0) * 1009 + rank)
        batch = crop_batch(collate([dataset[i] for i in batch_items]), settings.segment_frames, crops)
        model.zero_grad()
        loss, _, _ = task.losses(model, batch, 0)
        loss.backward()
        gradients.append([p.grad.clone() for p in model.parameters()])
    model.load_state_dict(initial)
    for parameter, *grads in zip(model.parameters(), *gradients):
        parameter.grad = sum(grads) / 2
    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr / settings.warmup_steps, betas=settings.betas,
                                  weight_decay=settings.weight_decay)
    optimizer.step()
    expected = model.state_dict()
    assert all(torch.allclose(ddp[k], expected[k], atol=1e-5) for k in expected)
    assert not all(torch.allclose(ddp[k], initial[k]) for k in initial)  # a real step was taken


def test_cli_train_export_and_reconstruct(mini, tmp_path, arctic_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "flow_vae", "--config", str(TINY), "--data", str(mini[0]), "--out", str(run),
                 "--steps", "2"]) == 0
    out = tmp_path / "rec.wav"
    assert main(["codec", "reconstruct", str(arctic_path), str(out), "--codec", str(run / "export")]) == 0
    assert out.is_file()
    assert main(["codec", "reconstruct", str(arctic_path), str(tmp_path / "other.wav"), "--codec", "nope"]) == 2
    assert "unknown codec 'nope'" in capsys.readouterr().err
    assert main(["train", "flow_vae", "--config", str(TINY), "--data", str(tmp_path), "--out", str(run)]) == 2


def test_configs_refuse_an_unknown_key_naming_it_and_the_file(tmp_path):
    """Every YAML names its model and parses through one checker: model, train and section names."""
    for path in sorted((REPO / "models" / "configs").glob("*.yaml")):
        assert registry.role_of(load_config(path)["model"]["model"]), path  # a registered model kind
    base = (REPO / "models" / "configs" / "flow_vae_tiny.yaml").read_text()
    for broken, fragment in ((base.replace("  latent_dim:", "  latent_dimm:"), "model: unknown setting 'latent_dimm'"),
                             (base.replace("  steps:", "  stepz:"), "train: unknown setting 'stepz'"),
                             (base + "extra:\n  x: 1\n", "unknown section 'extra'"),
                             (base.replace("  model: flow_vae\n", ""), "must name its model")):
        path = tmp_path / "broken.yaml"
        path.write_text(broken)
        with pytest.raises(ValueError, match=re.escape(fragment)) as error:
            load_config(path)
        assert str(path) in str(error.value) and len(str(error.value).splitlines()) == 1


def test_trainable_is_the_allow_list_beside_freeze():
    from models.training import TrainConfig, frozen_parameters

    model = torch.nn.ModuleDict({"encoder": torch.nn.Linear(2, 2), "adapter": torch.nn.Linear(2, 2)})
    only = frozen_parameters(model, TrainConfig.from_dict({"trainable": ["adapter"]}), "m")
    assert {id(p) for p in only} == {id(p) for p in model["encoder"].parameters()}
    assert {id(p) for p in frozen_parameters(model, TrainConfig.from_dict({"freeze": ["adapter"]}), "m")} == \
        {id(p) for p in model["adapter"].parameters()}
    lora = torch.nn.ModuleDict({"block": torch.nn.Linear(2, 2)})
    lora["block"].lora_a = torch.nn.Parameter(torch.zeros(1, 2))
    kept = frozen_parameters(lora, TrainConfig.from_dict({"trainable": ["*.lora_*"]}), "m")  # a glob
    assert {id(p) for p in kept} == {id(lora["block"].weight), id(lora["block"].bias)}
    with pytest.raises(ValueError, match=r"train.trainable \['lora'\] matches no parameter of m"):
        frozen_parameters(model, TrainConfig.from_dict({"trainable": ["lora"]}), "m")
    with pytest.raises(ValueError, match="give one of the two"):
        frozen_parameters(model, TrainConfig.from_dict({"trainable": ["adapter"], "freeze": ["encoder"]}), "m")


def test_a_recipe_declares_several_streams_and_the_harness_crops_them_together(mini, tmp_path):
    """A test-only recipe whose items carry, beside the mel, integer tokens at 50 Hz (cropped to the same
    span of time as the mel) and a prompt (never cropped): every batch the harness hands its losses holds
    each stream under its name, the tokens still integers and over the crop's seconds."""
    from models.data.dataset import MEL, Feature, SpeechDataset, Stream
    from models.training import Task, task

    # a token per 20 ms: the index of that 20 ms in the utterance (so where a crop starts can be read off)
    clock = Feature("clock_tokens", lambda wav: torch.arange(len(wav) * 50 // 22050)[None], 50.0, integer=True)
    prompt = Feature("first_frames", lambda mel: mel[:, :10], 1.0, source=MEL)
    seen: list[dict] = []

    @task("two_streams_test")
    class TwoStreams(Task):
        def streams(self):
            return {"tokens": Stream(clock), "prompt": Stream(prompt, crop="whole")}

        def build(self):
            return torch.nn.Linear(1, 1)

        def losses(self, model, batch, step):
            seen.append(batch)
            return model.weight.sum() * batch["features"].mean(), {}, None

    with pytest.raises(ValueError, match="'aligned' or 'whole'"):
        Stream(clock, crop="random")
    with pytest.raises(ValueError, match="reserved"):
        SpeechDataset(mini[0] / "manifest.jsonl", streams={"text": Stream(clock)})
    config = {"model": {}, "train": {"steps": 2, "batch_size": 2, "segment_frames": 40, "val_every": 100,
                                     "val_batches": 1, "val_samples": 0, "warmup_steps": 1}}
    Trainer("two_streams_test", config, data=str(mini[0]), out=str(tmp_path / "run"), device="cpu",
            log=lambda _: None).run()
    assert len(seen) >= 2
    ratio = 50.0 / MEL.frames_per_second
    for batch in seen:
        tokens, lengths = batch["tokens"], batch["tokens_lengths"]
        assert tokens.dtype == torch.int64 and tokens.shape[-1] == int(np.ceil(40 * ratio)) + 1
        assert batch["prompt"].shape[1:] == (80, 10) and batch["prompt_lengths"].tolist() == [10] * len(lengths)
        for i, (start, length) in enumerate(zip(batch["crop_starts"].tolist(), lengths.tolist())):
            assert batch["tokens_starts"][i] == int(np.floor(start * ratio))
            assert torch.equal(tokens[i, 0, :length], torch.arange(length) + batch["tokens_starts"][i])
            end = (start + int(batch["feature_lengths"][i])) * ratio  # where the mel crop ends, in tokens
            # to that moment, rounded up (one less where the utterance's last token ends before its last mel frame)
            assert np.ceil(end) - 1 <= batch["tokens_starts"][i] + length <= np.ceil(end)
