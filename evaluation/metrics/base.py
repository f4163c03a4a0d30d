"""The metric registry: what each metric needs, the model behind it, and how it is scored.

A metric is registered with `@metric(...)` on a factory `factory(device, options) -> Scorer`.
The runner calls the factory once per run (so a model loads once), scores every
utterance with `scorer(sample) -> {column: value}`, then calls `scorer.close()`.
A scorer that cannot score one utterance raises `MetricError(reason)`: the runner records
NaN with that reason, never a silent 0. A factory that cannot load its model raises
`MetricUnavailable(reason)`: the metric is skipped and the reason reported.
A system that produced no audio for an utterance is NaN for every metric, unless the
scorer defines `missing(sample)`: what the metric means for no output (WER: every word deleted).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from models import audio, registry

METRIC_RATE = 16000  # every ASR, speaker and MOS model here expects 16 kHz
NEEDS = ("reference", "text", "enrollment", "input")


class MetricError(ValueError):
    """A metric that cannot be computed for this input, and why."""


class MetricUnavailable(RuntimeError):
    """A metric whose model or package cannot be loaded here, and why."""


@dataclass
class Sample:
    """One utterance to score: the system's audio plus what the manifest says about it.

    Audio is read lazily, resampled to the requested rate, and cached per rate.
    """

    key: str
    audio_path: Path
    system: str | None = None
    text: str | None = None
    reference_path: Path | None = None  # clean ground truth, for intrusive metrics
    enrollment_path: Path | None = None  # another recording of the target voice, for SIM
    input_path: Path | None = None  # what the system was given (noisy, mixture, source)
    interferer_path: Path | None = None  # the other voice in a mixture (target speaker extraction)
    speaker: str | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def audio(self, which: str = "audio", sr: int = METRIC_RATE) -> np.ndarray:
        path = getattr(self, f"{which}_path")
        if path is None:
            raise MetricError(f"the manifest gives no {which} audio for {self.key}")
        if (which, sr) not in self._cache:
            try:
                self._cache[(which, sr)] = audio.load_audio(path, sr, max_seconds=None)
            except audio.AudioError as error:
                raise MetricError(f"{which} audio: {error}") from None
        return self._cache[(which, sr)]


class Scorer(Protocol):
    info: dict

    def __call__(self, sample: Sample) -> dict[str, float]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class MetricSpec:
    name: str
    columns: tuple[str, ...]
    needs: tuple[str, ...]
    higher_is_better: dict[str, bool]  # columns without an entry have no better direction
    description: str
    factory: Callable[[str, dict], Scorer]


METRICS: dict[str, MetricSpec] = {}


def metric(name: str, columns: tuple[str, ...], needs: tuple[str, ...], higher_is_better: dict[str, bool] | bool,
           description: str) -> Callable:
    """Register a scorer factory under `name`."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ValueError(f"metric {name}: unknown needs {sorted(unknown)}")
    if isinstance(higher_is_better, bool):
        higher_is_better = {column: higher_is_better for column in columns}

    def decorate(factory: Callable[[str, dict], Scorer]) -> Callable[[str, dict], Scorer]:
        METRICS[name] = MetricSpec(name, columns, needs, higher_is_better, description, factory)
        return factory

    return decorate


def get_metric(name: str) -> MetricSpec:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r} (available: {', '.join(METRICS)})")
    return METRICS[name]


def package_version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def wheel_file(requirement: str, relative: str, module: str | None = None) -> Path:
    """registry.wheel_file, reporting a missing package as an unavailable metric."""
    try:
        return registry.wheel_file(requirement, relative, module)
    except FileNotFoundError as error:
        raise MetricUnavailable(str(error)) from None


def free_device_memory(device: str) -> None:
    """After a metric's model is dropped: give its GPU memory back before the next loads."""
    import gc

    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()

