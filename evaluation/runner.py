"""The batch runner behind `speech-studio eval`: resumable, shardable, one model load per metric.

Order of work: (1) every generated system makes its audio, timed for RTF after one
warm-up call; (2) one metric at a time loads its model, scores every system x item, and
is freed before the next loads. Each finished unit is one JSON line appended and
flushed to `results/shard-I-of-N.jsonl`:

    {"system", "key", "speaker", "metric", "values": {column: value}}      or
    {"system", "key", "speaker", "metric", "values": null, "reason": "..."}  (NaN, and why)

A crash or Ctrl-C loses at most the units in flight (up to two per worker, for a metric that
scores several at once); `resume` reads every results file and skips the (system, key, metric)
units already there. Shards take every N-th item and write their own files, so shards (or
`torchrun` ranks) never share a file.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from evaluation.bench import hardware
from evaluation.metrics import MetricError, MetricUnavailable, Sample, get_metric
from evaluation.metrics.base import free_device_memory
from evaluation.results import RTF, ResultWriter, latest_rows, read_results
from evaluation.systems import AUDIO_FIELDS, Item, System, read_items
from models import audio
from models.files import write_text_atomic
from models.registry import REPO_ROOT, pick_device
from models.vocoder import current_vocoder  # the vocoder systems without their own decode with

WARMUP_TRIES = 3  # items tried in turn until one generates, before the timed loop


@dataclass
class RunConfig:
    manifest: str
    systems: list[System]
    metrics: list[str]
    out: str
    split: str | None = None
    resume: bool = False
    shard: tuple[int, int] = (0, 1)
    limit: int | None = None
    per_speaker: int | None = None
    options: dict = field(default_factory=dict)  # asr, latent_codec, ... passed to metric factories
    seed: int = 0
    report: bool = True
    public_report: bool = False  # the report's HTML without commands, commit, hardware or paths (studio)


def parse_shard(text: str | None) -> tuple[int, int]:
    """"I/N" -> (I, N); without one, torchrun's RANK / WORLD_SIZE, else (0, 1)."""
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like 0/4, not {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: the index must be in 0..{count - 1}")
    return index, count


def select_items(items: list[Item], limit: int | None, per_speaker: int | None) -> list[Item]:
    if per_speaker is not None:
        counts: dict[str | None, int] = {}
        kept = []
        for item in items:
            if counts.get(item.speaker, 0) < per_speaker:
                counts[item.speaker] = counts.get(item.speaker, 0) + 1
                kept.append(item)
        items = kept
    return items[:limit] if limit is not None else items


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("+dirty" if dirty else "")) if commit else "unknown"


def _row(system: System, item: Item, metric: str, values: dict | None = None, reason: str | None = None) -> dict:
    row = {"system": system.name, "key": item.key, "speaker": item.speaker, "metric": metric, "values": values}
    if reason is not None:
        row["reason"] = reason
    return row


class RunStopped(Exception):
    """Raised inside a run when its `stop` event is set; what was written stays, and --resume goes on."""


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise RunStopped("the run was stopped; resume it to finish")


def _generate(config: RunConfig, items: list[Item], done: set, writer: ResultWriter, device: str,
              meta: dict, stop: threading.Event | None = None) -> None:
    run_audio = Path(config.out) / "audio"
    for system in (s for s in config.systems if s.generated):
        todo = [item for item in items if (system.name, item.key, RTF) not in done and system.missing(item) is None]
        if not todo:
            continue
        generate = system.generator(device)
        for item in todo[:WARMUP_TRIES]:  # warm-up: first-call allocations and caches stay out of the RTF
            try:
                generate(item)
                break
            except (ValueError, RuntimeError):
                continue  # a failing item does not warm up: the next one does; the loop records the failure
        began = time.perf_counter()
        for item in tqdm(todo, desc=f"generate {system.name}", unit="utt", dynamic_ncols=True):
            _check_stop(stop)
            try:
                start = time.perf_counter()
                wav, sr, *extra = generate(item)
                seconds = time.perf_counter() - start
                if len(wav) == 0:
                    raise ValueError("the system returned no audio")
                audio.save_audio(system.audio_path(item, run_audio), wav, sr)
                duration = len(wav) / sr
                writer.write(_row(system, item, RTF, {"rtf": seconds / duration, "generation_seconds": seconds,
                                                      "audio_seconds": duration, **(extra[0] if extra else {})}))
            except (ValueError, RuntimeError) as error:  # bad item or model failure: recorded, run goes on
                writer.write(_row(system, item, RTF, reason=f"generation failed: {error}"))
        del generate
        free_device_memory(device)
        seconds = time.perf_counter() - began
        meta["timing"][f"generate {system.name}"] = {"units": len(todo), "seconds": round(seconds, 2),
                                                     "units_per_minute": round(60 * len(todo) / max(seconds, 1e-9), 1)}


def _sample(system: System, item: Item, run: Path) -> Sample:
    return Sample(key=item.key, audio_path=system.audio_path(item, run / "audio"), system=system.name,
                  text=item.text, reference_path=item.reference, enrollment_path=item.enrollment,
                  input_path=item.input, interferer_path=item.interferer, speaker=item.speaker)


def _score_unit(scorer, metric: str, system: System, item: Item, run: Path, failed: set) -> dict:
    """One metric's result row for one system's output on one item (a reason instead of values when it has none)."""
    sample = _sample(system, item, run)
    try:
        if (system.name, item.key) in failed:
            if not hasattr(scorer, "missing"):
                return _row(system, item, metric, reason="no audio: generation failed")
            return _row(system, item, metric, scorer.missing(sample), reason="generation failed: scored as no output")
        if not sample.audio_path or not Path(sample.audio_path).is_file():
            raise MetricError(f"no audio file for this system: {sample.audio_path}")
        return _row(system, item, metric, scorer(sample))
    except MetricError as reason:
        return _row(system, item, metric, reason=str(reason))


def _score(config: RunConfig, items: list[Item], done: set, failed: set, writer: ResultWriter, device: str,
           meta: dict, stop: threading.Event | None = None) -> None:
    run = Path(config.out)
    options = {**config.options, "latent_dir": run / "latents"}
    for name in config.metrics:
        spec = get_metric(name)
        todo = [(s, i) for s in config.systems for i in items
                if (s.name, i.key, name) not in done and s.missing(i) is None]
        if not todo:
            continue
        try:
            scorer = spec.factory(device, options)
        except MetricUnavailable as reason:
            meta["skipped"][name] = str(reason)
            print(f"metric {name} skipped: {reason}", file=sys.stderr)
            continue
        meta["metrics"][name] = {"columns": list(spec.columns), "needs": list(spec.needs), **scorer.info}
        _write_meta(run, config, meta)
        start = time.perf_counter()

        # A scorer that declares `workers` > 1 scores that many units at once from threads (its model releases
        # the GIL). Rows are written in order, with two units per worker queued ahead: a stop loses at most those.
        workers = getattr(scorer, "workers", 1)
        units = iter(todo)
        try:
            with ThreadPoolExecutor(workers) as pool, tqdm(total=len(todo), desc=name, unit="utt",
                                                         dynamic_ncols=True) as progress:
                queued: deque = deque()
                try:
                    while True:
                        while len(queued) < 2 * workers and (unit := next(units, None)) is not None:
                            _check_stop(stop)
                            queued.append(pool.submit(_score_unit, scorer, name, *unit, run, failed))
                        if not queued:
                            break
                        writer.write(queued.popleft().result())
                        progress.update()
                except BaseException:  # a stop, Ctrl-C or a crash: units not yet started are dropped
                    for future in queued:
                        future.cancel()
                    raise
        finally:
            scorer.close()
            del scorer
            free_device_memory(device)
        seconds = time.perf_counter() - start
        meta["timing"][name] = {"units": len(todo), "seconds": round(seconds, 2),
                                "units_per_minute": round(60 * len(todo) / max(seconds, 1e-9), 1)}
        _write_meta(run, config, meta)


def _write_meta(run: Path, config: RunConfig, meta: dict) -> None:
    index, count = config.shard
    write_text_atomic(run / "results" / f"shard-{index}-of-{count}.meta.json", json.dumps(meta, indent=2) + "\n")


def planned_units(config: RunConfig) -> int:
    """How many result rows a complete run writes (for progress bars): one per generated
    system x item, and one per metric x system x item."""
    index, count = config.shard
    items = select_items(read_items(config.manifest, config.split), config.limit, config.per_speaker)[index::count]
    units = 0
    for system in config.systems:
        applicable = sum(system.missing(item) is None for item in items)
        units += applicable * ((1 if system.generated else 0) + len(config.metrics))
    return units


def run_eval(config: RunConfig, argv: list[str] | None = None, stop: threading.Event | None = None) -> dict:
    """Run (or resume) an evaluation; returns a summary of what this process did. Setting `stop` (from
    another thread) ends it before the next unit with RunStopped."""
    for name in config.metrics:
        get_metric(name)  # unknown names fail before any work
    index, count = config.shard
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: the index must be in 0..{count - 1}")
    out = Path(config.out)
    results = out / "results"
    existing = read_results(out)
    own = results / f"shard-{index}-of-{count}.jsonl"
    # Only this shard's own file counts: shards started side by side must not refuse each other.
    if own.is_file() and own.stat().st_size > 0 and not config.resume:
        raise ValueError(f"{out} already holds results for shard {index}/{count}: pass --resume to continue it, "
                         "or choose another --out")
    items = select_items(read_items(config.manifest, config.split), config.limit, config.per_speaker)
    if not items:
        raise ValueError("no items to evaluate (check --limit and --per-speaker)")
    for item in items:  # a missing clip is the manifest's fault: said before any work, not scored as n/a
        for field_name in AUDIO_FIELDS:
            path = getattr(item, field_name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{Path(config.manifest).name}: item {item.key!r}: its {field_name} audio "
                                 f"{Path(path).name} does not exist")
    for system in config.systems:  # a system none of the items applies to would report a mean of nothing
        if all(system.missing(item) for item in items):
            raise ValueError(f"system {system.name!r} cannot run on this test set: none of its {len(items)} "
                             f"items has {system.missing(items[0])}")
    items = items[index::count]
    device = pick_device()
    meta = {"command": shlex.join(argv if argv is not None else sys.argv), "git_commit": git_commit(),
            "manifest": str(Path(config.manifest).resolve()), "split": config.split, "shard": f"{index}/{count}",
            "items": len(items), "systems": {s.name: ":".join([s.kind, s.source] + [f"{k}={v}" for k, v in s.options])
                                               for s in config.systems},
            "device": device, "vocoder": current_vocoder(),
            "hardware": hardware(), "python": platform.python_version(), "seed": config.seed,
            "options": {k: str(v) for k, v in config.options.items()}, "metrics": {}, "skipped": {}, "timing": {},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_meta(out, config, meta)

    latest = latest_rows(existing)
    done = {(r["system"], r["key"], r["metric"]) for r in latest}
    failed = {(r["system"], r["key"]) for r in latest if r["metric"] == RTF and r["values"] is None}
    writer = ResultWriter(own)
    try:
        _generate(config, items, done, writer, device, meta, stop)
        failed |= {(r["system"], r["key"]) for r in read_results(out) if r["metric"] == RTF and r["values"] is None}
        _score(config, items, done, failed, writer, device, meta, stop)
    finally:
        writer.close()
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    _write_meta(out, config, meta)
    summary = {"out": str(out), "items": len(items), "systems": len(config.systems), "skipped": meta["skipped"]}
    if config.report:
        from evaluation.report import write_report

        summary["report"] = [str(p) for p in write_report(out, seed=config.seed, public=config.public_report)]
    return summary
