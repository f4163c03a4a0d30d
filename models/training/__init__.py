"""The training harness every model shares: `speech-studio train <task> --config C --data D --out RUN`.

A run folder holds:
    config.yaml                 the configuration as run (model, train, data sections)
    log.csv, val.csv            training and validation logs (and TensorBoard events when installed)
    checkpoints/step-N/         model.safetensors, optimizer.safetensors, state.json -- everything
                                needed to resume: weights, optimizer and scheduler state, RNG, step
    samples/step-N/             validation audio
    export/                     the latest registry checkpoint (safetensors + config + card)

Nothing is pickled: tensors go to safetensors, the rest to JSON. With `torchrun
--nproc_per_node K` the same command trains data-parallel (DDP; gloo on CPU, NCCL on GPU):
each rank takes every K-th batch and gradients are averaged.

A task (see `Task`) knows its model: how to build it, its losses on a batch, and how to
validate. `TASKS` maps names to tasks; each recipe (models/training/<model>.py) registers its own
with `@task(name)`. Model files never import this package: loading a checkpoint for inference
needs no training code.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models import audio, registry
from models.config import parse_config, refuse_fitted
from models.data.augment import MEL_CONDITIONS
from models.data.dataset import MEL, Feature, SpeechDataset, Stream, collate
from models.files import atomic_path, replace_folder, write_text_atomic
from models.roles import Scorers

# Raw audio (1, samples), for models trained against the waveform (GAN heads); not cached.
WAVEFORM = Feature("wav", lambda wav: torch.from_numpy(wav)[None], audio.SAMPLE_RATE, cached=False)
FEATURES = {"mel": MEL, "wav": WAVEFORM, "mel_conditions": MEL_CONDITIONS}


@dataclass
class TrainConfig:
    steps: int = 10000
    lr: float = 2e-4
    betas: tuple[float, float] = (0.8, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0
    batch_size: int = 16  # utterances per batch (per rank)
    speaker_pairs: bool = False  # batches of same-speaker pairs (epoch_batches), for recipes that continue a voice
    segment_frames: int | None = 128  # random crop per utterance, in feature frames; None = whole
    max_seconds: float = 20.0
    amp: str = "none"  # "bf16", "fp16" (CUDA) or "none"
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    val_every: int = 1000
    val_batches: int = 8
    val_samples: int = 6  # utterances decoded to audio and scored at each validation
    init_from: str | None = None  # start from this checkpoint's weights (a registry name or folder): fine-tuning
    freeze: tuple[str, ...] = ()  # parameter-name prefixes (or globs) left untouched, e.g. [encoder, flow]
    trainable: tuple[str, ...] = ()  # or the other way round: only these train (an adapter, "*.lora_*")
    # With init_from: copy only the parameters under these name prefixes, from a checkpoint that may be of
    # another model sharing them (KALL-E's transformer from SLED's); empty copies everything, strictly.
    init_modules: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict, source: str = "train settings") -> "TrainConfig":
        config = parse_config(cls, data, source)
        if config.init_modules and not config.init_from:
            raise ValueError(f"{source}: init_modules names parts of the init_from checkpoint; set init_from")
        return config


def initialize(model: torch.nn.Module, weights: Path, modules: tuple[str, ...] = ()) -> None:
    """Load a checkpoint's weights into `model`: all of them strictly, or only those under the name
    prefixes `modules`, each of which must match something of the same shape in both."""
    if not modules:
        registry.load_safetensors_into(model, str(weights), strict=True)
        return
    source = load_file(str(weights))
    own = model.state_dict()
    def under(name: str, prefix: str) -> bool:  # "transformer" holds transformer.*, not transformer_x.*
        return name == prefix or name.startswith(prefix + ".")

    chosen = {name: value for name, value in source.items() if any(under(name, p) for p in modules)}
    for prefix in modules:
        if not any(under(name, prefix) for name in chosen):
            raise ValueError(f"train.init_modules: {prefix!r} matches no parameter of {weights.parent}")
    for name, value in chosen.items():
        if name not in own or own[name].shape != value.shape:
            shape = tuple(own[name].shape) if name in own else "absent"
            raise ValueError(f"train.init_modules: {name} {tuple(value.shape)} in {weights.parent} does not fit "
                             f"the model's ({shape})")
    model.load_state_dict(chosen, strict=False)


def load_config(path: str | os.PathLike) -> dict:
    """A YAML file with `model:` (naming its model, `model: <name>`, like a checkpoint's config.json)
    and `train:` sections (and optional `data:`), every section checked through the one config
    parser: an unknown key is one line naming it and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config not found: {path}")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{path}: a training config needs a `model:` section")
    unknown = sorted(set(config) - {"model", "train", "data"})
    if unknown:
        raise ValueError(f"{path}: unknown section {unknown[0]!r} (known: data, model, train)")
    name = config["model"].get("model")
    if not name:
        raise ValueError(f"{path}: the model section must name its model (`model: sled`, `model: flow_vae`, ...)")
    config_class = registry.config_class(name)
    if config_class is not None:
        refuse_fitted(config["model"], f"{path}: model")
        parse_config(config_class, config["model"], f"{path}: model")
    config.setdefault("train", {})
    config.setdefault("data", {})
    TrainConfig.from_dict(config["train"], f"{path}: train")
    return config


# ------------------------------------------------------------------------- tasks


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper, or the model itself: what a recipe reads attributes and calls
    methods on (a forward that must average gradients still goes through `model`)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def frozen_parameters(model: torch.nn.Module, train: TrainConfig, name: str) -> list[torch.nn.Parameter]:
    """The parameters a run leaves untouched: those under `freeze`, or all but those under `trainable`
    (one of the two). Each entry is a name prefix or a glob (`*.lora_*`: every LoRA factor); one that
    matches no parameter is an error naming it."""
    if train.freeze and train.trainable:
        raise ValueError("train.freeze and train.trainable: give one of the two")
    named = list(model.named_parameters())

    def matches(name: str, patterns: tuple[str, ...]) -> bool:
        return any(name.startswith(p) or fnmatch.fnmatchcase(name, p) for p in patterns)

    for key, patterns in (("freeze", train.freeze), ("trainable", train.trainable)):
        unmatched = [p for p in patterns if not any(matches(n, (p,)) for n, _ in named)]
        if unmatched:
            raise ValueError(f"train.{key} {unmatched} matches no parameter of {name}")
    if train.trainable:
        return [p for n, p in named if not matches(n, train.trainable)]
    return [p for n, p in named if matches(n, train.freeze)]


class Task:
    """What the harness needs from a model: a recipe, in models/training/<model>.py."""

    name: str

    def __init__(self, model_config: dict):
        self.model_config = model_config

    def feature(self) -> Feature | None:
        """The training feature, when the model decides it (e.g. a codec's latents); else data.feature."""
        return None

    def streams(self) -> dict[str, Stream]:
        """Fields of an item beside its text and training feature, by name, and how each is cropped (e.g.
        semantic tokens aligned with the acoustic ones): batches carry each under its name, with
        `<name>_lengths`."""
        return {}

    def prepare(self, train_set: SpeechDataset) -> None:
        """Fit what the model needs from the training data before build() (e.g. feature statistics)."""

    def build(self) -> torch.nn.Module:
        raise NotImplementedError

    def discriminator(self) -> torch.nn.Module | None:
        return None

    def losses(self, model: torch.nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict, Any]:
        """(total generator loss, named float logs, anything the discriminator step needs)."""
        raise NotImplementedError

    def discriminator_loss(self, discriminator: torch.nn.Module, cache: Any) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def validate(self, model: torch.nn.Module, items: list[dict], out_dir: Path, scorers: Scorers) -> dict:
        """Decode a few validation utterances to `out_dir` and return metrics (those `scorers` allow)."""
        return {}

    def exported(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the run's export/ checkpoint holds: the model, less any part only training needs."""
        return model


class SignalScores:
    """A codec recipe's validation: reconstructions saved to a folder, each scored against its input with the
    harness's signal scorers (PESQ-wb, STOI) when it hands them in; `means()` is the metrics row."""

    def __init__(self, out_dir: Path, scorers: Scorers):
        self.out_dir, self.scorers = out_dir, scorers
        self.scores: dict[str, list[float]] = {}

    def add(self, item_id: str, reference: np.ndarray, output: np.ndarray, suffix: str = "") -> None:
        audio.save_audio(self.out_dir / f"{item_id}{suffix}.wav", output)
        if self.scorers.signal is None:
            return
        try:
            for name, value in self.scorers.signal(reference, output, audio.SAMPLE_RATE).items():
                self.scores.setdefault(f"{name}{suffix}", []).append(value)
        except ValueError:  # too short or silent to score
            return

    def means(self) -> dict:
        return {k: float(np.mean(v)) for k, v in self.scores.items() if v}


TASKS: dict[str, Callable[[dict], Task]] = {}


def task(name: str) -> Callable:
    def decorate(cls):
        cls.name = name
        TASKS[name] = cls
        return cls

    return decorate


def get_task(name: str, model_config: dict) -> Task:
    if name not in TASKS:
        import importlib

        try:
            importlib.import_module(f"models.training.{name}")  # a recipe registers its task on import
        except ModuleNotFoundError as error:
            if error.name != f"models.training.{name}":  # the recipe exists but needs something missing
                raise
    if name not in TASKS:
        raise ValueError(f"unknown model to train {name!r} (available: {', '.join(sorted(TASKS)) or 'none'})")
    return TASKS[name](model_config)


# ------------------------------------------------------------------ data


def crop_batch(batch: dict, segment: int | None, generator: torch.Generator, streams: dict[str, Stream] | None = None,
               frame_rate: float = MEL.frames_per_second) -> dict:
    """Random crops of `segment` frames of the training feature (at `frame_rate`; shorter items stay whole,
    padded and masked), and of each "aligned" stream the same span of time at its own rate: from the frame
    where the crop starts to the one where it ends, rounded outwards (`<stream>_starts` says where each
    begins). "whole" streams pass unchanged; `crop_starts` is where each feature crop starts."""
    if segment is None:
        return batch
    features, lengths = batch["features"], batch["feature_lengths"]
    out = features.new_full((features.shape[0], features.shape[1], segment), float(features.amin()))
    new_lengths = torch.minimum(lengths, torch.tensor(segment))
    spans = []
    for i, length in enumerate(lengths.tolist()):
        start = int(torch.randint(0, max(1, length - segment + 1), (1,), generator=generator))
        take = min(segment, length)
        out[i, :, :take] = features[i, :, start:start + take]
        spans.append((start, take))
    cropped = {**batch, "features": out, "feature_lengths": new_lengths,
               "crop_starts": torch.tensor([start for start, _ in spans])}
    for name, stream in (streams or {}).items():
        if stream.crop == "aligned":
            cropped.update(_crop_aligned(name, batch, spans, stream.feature.frames_per_second / frame_rate,
                                         segment))
    return cropped


def _crop_aligned(name: str, batch: dict, spans: list[tuple[int, int]], ratio: float, segment: int) -> dict:
    """A stream's frames over each item's cropped span of time (`ratio` = its frames per feature frame)."""
    values, lengths = batch[name], batch[f"{name}_lengths"].tolist()
    out = values.new_zeros((values.shape[0], values.shape[1], math.ceil(segment * ratio) + 1))
    starts, kept = [], []
    for i, ((start, take), length) in enumerate(zip(spans, lengths)):
        lo = min(length, math.floor(start * ratio))
        hi = min(length, math.ceil((start + take) * ratio))
        out[i, :, : hi - lo] = values[i, :, lo:hi]
        starts.append(lo)
        kept.append(hi - lo)
    return {name: out, f"{name}_lengths": torch.tensor(kept), f"{name}_starts": torch.tensor(starts)}


def step_generator(step: int, salt: int) -> torch.Generator:
    """Random draws of a recipe (masks, dropped conditions) from the step and the DDP rank alone, so that a
    resumed run draws them as an unbroken one and ranks draw apart; `salt` keeps two uses' streams apart."""
    rank = int(os.environ.get("RANK", 0))
    return torch.Generator().manual_seed((step * 1_000_003 + salt) * 1009 + rank)


def epoch_batches(n_items: int, batch_size: int, epoch: int, seed: int, rank: int, world: int,
                  lengths: list[int] | None = None, speakers: list | None = None) -> list[list[int]]:
    """A seeded permutation per epoch cut into batches; rank r takes batches r, r+world, ...

    With `lengths` (whole, uncropped utterances), items are sorted by length within windows
    of 50 batches before cutting and the batches shuffled: far less padding per batch. With
    `speakers` (each item's speaker), a batch is batch_size / 2 pairs of one speaker's utterances
    (each speaker's odd one out is paired with another's), so a recipe that continues a voice with
    another utterance of it (voice_sequences) finds a partner for almost every item: in random
    batches over a few hundred speakers, few items have one.
    """
    if speakers is not None and (batch_size < 2 or batch_size % 2):
        raise ValueError(f"speaker pairs need an even batch_size, not {batch_size}")
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(n_items))
    rng.shuffle(order)
    units = [[i] for i in order]
    if speakers is not None:
        by_speaker: dict = {}
        for i in order:
            by_speaker.setdefault(speakers[i], []).append(i)
        odd = [group[-1] for group in by_speaker.values() if len(group) % 2]
        units = [group[j:j + 2] for group in by_speaker.values() for j in range(0, len(group) - 1, 2)]
        units += [odd[j:j + 2] for j in range(0, len(odd) - 1, 2)]
        rng.shuffle(units)
    per_batch = max(1, batch_size // (2 if speakers is not None else 1))
    if lengths is not None:
        window = 50 * per_batch
        units = [u for w in range(0, len(units), window)
                 for u in sorted(units[w:w + window], key=lambda u: max(lengths[i] for i in u))]
    batches = [[i for u in units[k:k + per_batch] for i in u] for k in range(0, len(units) - per_batch + 1, per_batch)]
    if lengths is not None:
        rng.shuffle(batches)
    usable = len(batches) // world * world
    return batches[rank:usable:world]


# ------------------------------------------------------------ checkpoints


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.contiguous()
            else:
                meta["scalars"][f"{index}.{key}"] = value
    return tensors, meta


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_training_state(folder: Path, modules: dict[str, torch.nn.Module], optimizers: dict, schedulers: dict,
                        state: dict) -> Path:
    """One resumable checkpoint folder, written to a temp folder and swapped into place."""
    meta = {**state, "optimizers": {}, "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
            "python_rng": _json_rng(random.getstate()), "numpy_rng": _json_numpy_rng()}

    def fill(tmp: Path) -> None:
        for name, module in modules.items():
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / f"{name}.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / "rng.safetensors"))
        for name, optimizer in optimizers.items():
            tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, str(tmp / f"optimizer_{name}.safetensors"))
            meta["optimizers"][name] = opt_meta
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))

    return replace_folder(folder, fill)


def load_training_state(folder: Path, modules: dict, optimizers: dict, schedulers: dict, device: str) -> dict:
    meta = json.loads((folder / "state.json").read_text())
    for name, module in modules.items():
        module.load_state_dict(load_file(str(folder / f"{name}.safetensors"), device=str(device)))
    for name, optimizer in optimizers.items():
        tensors = load_file(str(folder / f"optimizer_{name}.safetensors"), device=str(device))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizers"][name]))
    for name, scheduler in schedulers.items():
        scheduler.load_state_dict(meta["schedulers"][name])
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    random.setstate(_python_rng(meta["python_rng"]))
    np.random.set_state(_numpy_rng(meta["numpy_rng"]))
    return meta


def _json_rng(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng(data: list) -> tuple:
    return data[0], tuple(data[1]), data[2]


def _json_numpy_rng() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _numpy_rng(data: list) -> tuple:
    return data[0], np.array(data[1], dtype=np.uint32), data[2], data[3], data[4]


def latest_checkpoint(run: Path) -> Path | None:
    folders = sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    return folders[-1] if folders else None


# ------------------------------------------------------------------ the loop


@dataclass
class Trainer:
    task_name: str
    config: dict
    data: str
    out: str
    resume: bool = False
    device: str | None = None
    max_steps: int | None = None  # stop this process early (the schedule still follows train.steps)
    validate_only: bool = False  # one validation of the loaded weights (init_from or --resume), no training
    validate_split: str = "valid"  # the corpus split validation reads (heldout: the voices no run trains on)
    log: Callable[[str], None] = print
    scorers: Scorers = field(default_factory=Scorers)  # validation's quality measures (none: losses only)
    train: TrainConfig = field(init=False)

    def __post_init__(self):
        self.train = TrainConfig.from_dict(self.config.get("train", {}))
        self.task = get_task(self.task_name, self.config["model"])

    def _distributed(self) -> tuple[int, int]:
        world = int(os.environ.get("WORLD_SIZE", 1))
        rank = int(os.environ.get("RANK", 0))
        if world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and self.device != "cpu" else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            torch.distributed.init_process_group(backend)
        return rank, world

    def run(self) -> dict:
        t = self.train
        rank, world = self._distributed()
        device = registry.pick_device(self.device)
        if device.startswith("cuda") and world > 1:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        run = Path(self.out)
        manifest = Path(self.data) / "manifest.jsonl" if Path(self.data).is_dir() else Path(self.data)
        if not manifest.is_file():
            raise FileNotFoundError(f"no corpus manifest at {manifest} (build one with `speech-studio corpus build`)")
        previous = latest_checkpoint(run)
        if previous is not None and not self.resume:
            raise ValueError(f"{run} already has checkpoints: pass --resume to continue, or choose another --out")
        if self.validate_only and previous is None and not t.init_from:
            raise ValueError("--validate-only needs weights: set train.init_from, or --resume a run with checkpoints")
        if rank == 0:
            write_text_atomic(run / "config.yaml", yaml.safe_dump({**self.config, "task": self.task_name},
                                                                   sort_keys=False))

        random.seed(t.seed + rank)
        np.random.seed(t.seed + rank)
        torch.manual_seed(t.seed + rank)
        data = self.config.get("data", {})
        feature = self.task.feature() or FEATURES[data.get("feature", "mel")]
        cache = data.get("cache") or str(manifest.parent / "cache")
        self.streams = self.task.streams()
        train_set, valid_set = (SpeechDataset(manifest, (split,), feature=feature, cache_dir=cache,
                                              max_seconds=t.max_seconds, streams=self.streams)
                                for split in ("train", self.validate_split))
        self.task.prepare(train_set)

        model = self.task.build().to(device)
        if t.init_from:
            initialize(model, registry.resolve(t.init_from) / registry.WEIGHTS, t.init_modules)
        for parameter in frozen_parameters(model, t, self.task_name):
            parameter.requires_grad_(False)
        discriminator = self.task.discriminator()
        modules = {"model": model}
        if discriminator is not None:
            modules["discriminator"] = discriminator.to(device)
        optimizers = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=t.lr, betas=t.betas,
                                              weight_decay=t.weight_decay)
                      for name, m in modules.items()}
        schedulers = {name: torch.optim.lr_scheduler.LambdaLR(o, self._lr_lambda) for name, o in optimizers.items()}
        state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "wall_time_s": 0.0, "seen_seconds": 0.0}
        if previous is not None:
            meta = load_training_state(previous, modules, optimizers, schedulers, device)
            state.update({k: meta[k] for k in state})
            self.log(f"resumed from {previous} at step {state['step']}")
        self.board = _tensorboard(run) if rank == 0 else None
        if self.validate_only:
            if rank == 0:
                self._validate(model, valid_set, run, state, device)
            return state
        wrapped, wrapped_discriminator = model, discriminator
        if world > 1:
            ids = [device] if device.startswith("cuda") else None
            wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
            if discriminator is not None:
                wrapped_discriminator = torch.nn.parallel.DistributedDataParallel(discriminator, device_ids=ids)

        autocast = self._autocast(device)
        stop = min(t.steps, self.max_steps) if self.max_steps else t.steps
        progress = tqdm(total=stop, initial=state["step"], desc=f"train {self.task_name}", unit="step",
                        disable=rank != 0, dynamic_ncols=True)
        started = time.perf_counter() - state["wall_time_s"]
        lengths = [train_set.frames(i) for i in range(len(train_set))] if t.segment_frames is None else None
        speakers = [row["speaker"] for row in train_set.rows] if t.speaker_pairs else None
        logs: dict[str, list[float]] = {}
        while state["step"] < stop:
            batches = epoch_batches(len(train_set), t.batch_size, state["epoch"], t.seed, rank, world, lengths,
                                    speakers)
            if not batches:
                raise ValueError(f"the training split has fewer than {t.batch_size * world} utterances")
            for batch_index in range(state["batch_in_epoch"], len(batches)):
                if state["step"] >= stop:
                    break
                batch = collate([train_set[i] for i in batches[batch_index]])
                # crops drawn from (seed, rank, step) alone, so a resumed run crops exactly as an unbroken one
                crop_rng = torch.Generator().manual_seed((t.seed * 1_000_003 + state["step"]) * 1009 + rank)
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in
                         crop_batch(batch, t.segment_frames, crop_rng, self.streams,
                                    feature.frames_per_second).items()}
                step_logs = self._step(wrapped, wrapped_discriminator, optimizers, schedulers, batch, state["step"],
                                       autocast)
                for key, value in step_logs.items():
                    logs.setdefault(key, []).append(value)
                state["step"] += 1
                state["batch_in_epoch"] = batch_index + 1
                state["seen_seconds"] += float(batch["feature_lengths"].sum()) / feature.frames_per_second * world
                state["wall_time_s"] = time.perf_counter() - started
                progress.update(1)
                step = state["step"]
                if rank == 0 and step % t.log_every == 0:
                    means = {k: float(np.mean(v)) for k, v in logs.items()}
                    progress.set_postfix({k: f"{v:.3g}" for k, v in list(means.items())[:3]})
                    self._record(run / "log.csv", {"step": step, "wall_time_s": round(state["wall_time_s"], 1),
                                                   "lr": schedulers["model"].get_last_lr()[0], **means})
                    logs = {}
                if rank == 0 and (step % t.val_every == 0 or step == stop):
                    self._validate(model, valid_set, run, state, device)
                if rank == 0 and (step % t.checkpoint_every == 0 or step == stop):
                    self._checkpoint(run, modules, optimizers, schedulers, state)
            else:
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
        progress.close()
        if world > 1:
            torch.distributed.barrier()
        return state

    def _lr_lambda(self, step: int) -> float:
        t = self.train
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def _autocast(self, device: str):
        amp = self.train.amp
        if amp == "none":
            return lambda: torch.autocast("cpu", enabled=False)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        if dtype is None:
            raise ValueError(f"train.amp must be none, bf16 or fp16, not {amp!r}")
        kind = "cuda" if device.startswith("cuda") else "cpu"
        return lambda: torch.autocast(kind, dtype=dtype)

    def _step(self, model, discriminator, optimizers, schedulers, batch, step, autocast) -> dict:
        """Generator (model) update, then the discriminator's on the detached output, if any."""
        t = self.train
        with autocast():
            loss, logs, cache = self.task.losses(model, batch, step)
        optimizers["model"].zero_grad(set_to_none=True)
        loss.backward()
        trainable = [p for p in model.parameters() if p.requires_grad]
        logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(trainable, t.grad_clip))
        optimizers["model"].step()
        if discriminator is not None and cache is not None:
            optimizers["discriminator"].zero_grad(set_to_none=True)  # drop what the generator loss left
            with autocast():
                d_loss, d_logs = self.task.discriminator_loss(discriminator, cache)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(discriminator.parameters(), t.grad_clip)
            optimizers["discriminator"].step()
            logs.update(d_logs)
        for scheduler in schedulers.values():
            scheduler.step()
        return logs

    def _validate(self, model, valid_set, run: Path, state: dict, device: str) -> None:
        # Forked RNG: validating must not change the training run's random stream (resumes stay exact).
        devices = [torch.device(device)] if str(device).startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            self._validate_forked(model, valid_set, run, state, device)

    def _validate_forked(self, model, valid_set, run: Path, state: dict, device: str) -> None:
        t = self.train
        model.eval()
        losses: dict[str, list[float]] = {}
        batches: list[dict] = []
        generator = torch.Generator().manual_seed(t.seed)
        with torch.no_grad():
            for index, start in enumerate(range(0, min(len(valid_set), t.val_batches * t.batch_size), t.batch_size)):
                batch = collate([valid_set[i] for i in range(start, min(start + t.batch_size, len(valid_set)))])
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in
                         crop_batch(batch, t.segment_frames, generator, self.streams,
                                    valid_set.feature.frames_per_second).items()}
                # a recipe's draws (masks, diffusion times, dropped conditions) come from the step it is given:
                # the batch's index gives every validation the same draws, so its numbers compare across steps
                _, logs, _ = self.task.losses(model, batch, index)
                for key, value in logs.items():
                    losses.setdefault(f"val_{key}", []).append(value)
                if self.validate_only:
                    batches.append({"step": state["step"], "split": self.validate_split, "batch": index,
                                    "first_id": batch["ids"][0], **logs})
            items = [valid_set.rows[i] | {"manifest": str(valid_set.manifest)}
                     for i in range(min(t.val_samples, len(valid_set)))]
            metrics = self.task.validate(model, items, run / "samples" / f"step-{state['step']}", self.scorers)
        model.train()
        row = {"step": state["step"], **({"split": self.validate_split} if self.validate_only else {}),
               **{k: float(np.mean(v)) for k, v in losses.items()}, **metrics}
        self._record(run / "val.csv", row)
        for logged in batches:  # batch by batch, for paired comparisons of runs on the same batches and draws
            self._append_csv(run / "val_batches.csv", logged)
        state["last_validation"] = row
        self.log("validation " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)))

    def _checkpoint(self, run: Path, modules, optimizers, schedulers, state: dict) -> None:
        save_training_state(run / "checkpoints" / f"step-{state['step']}", modules, optimizers, schedulers, state)
        for old in sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[
                :-self.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        self.export(run, modules["model"], state)

    def export(self, run: Path, model: torch.nn.Module, state: dict) -> Path:
        """The model as a registry checkpoint, with a card recording how it was made."""
        data = Path(self.data).resolve()  # relative to the project when inside it: cards leave the machine
        shown = data.relative_to(Path.cwd()) if data.is_relative_to(Path.cwd()) else data
        card = {"data": str(shown), "steps": state["step"],
                "wall_time_s": round(state["wall_time_s"], 1), "device": _device_name(next(model.parameters())),
                "metrics": {k: round(v, 4) for k, v in state.get("last_validation", {}).items()
                            if isinstance(v, float)},
                "audio_seen_hours": round(state["seen_seconds"] / 3600, 2), "task": self.task_name}
        if self.train.init_from:  # a fine-tune: say what it started from and what stayed fixed
            base = registry.resolve(self.train.init_from)
            card["fine_tuned_from"] = {"checkpoint": str(self.train.init_from),
                                       **{k: v for k, v in registry.read_card(base / registry.CARD).items()
                                          if k in ("steps", "wall_time_s", "device", "audio_seen_hours")},
                                       "frozen": list(self.train.freeze)}
            if self.train.trainable:
                card["fine_tuned_from"]["trained_only"] = list(self.train.trainable)
            if self.train.init_modules:
                card["fine_tuned_from"]["modules"] = list(self.train.init_modules)
        config = {"model": self.task_name, **self.config["model"]}
        return registry.save_checkpoint(self.task.exported(model), config, card, run / "export")

    def _record(self, path: Path, row: dict) -> None:
        self._append_csv(path, row)
        if self.board is not None:
            prefix = path.stem
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.board.add_scalar(f"{prefix}/{key}", value, row["step"])
            self.board.flush()

    @staticmethod
    def _append_csv(path: Path, row: dict) -> None:
        """Append a row; a new column rewrites the header (the file stays one valid CSV)."""
        rows = list(csv.DictReader(open(path))) if path.is_file() else []
        columns = list(rows[0].keys()) if rows else []
        if set(row) - set(columns) or not rows:
            columns += [k for k in row if k not in columns]
            with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows + [row])
            return
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=columns).writerow(row)


def _tensorboard(run: Path):
    """A TensorBoard writer when the tensorboard package is installed; CSV logs either way."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run / "tensorboard"))


def _device_name(parameter: torch.Tensor) -> str:
    if parameter.device.type == "cuda":
        return torch.cuda.get_device_name(parameter.device)
    return f"cpu ({torch.get_num_threads()} threads)"

