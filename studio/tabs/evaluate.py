"""Evaluate: the evaluation bench (evaluation.runner) on a built-in or uploaded test set, with a
progress bar, a live results table, plots, and the CSV / HTML report; runs resume by name."""

from __future__ import annotations

import math
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

import gradio as gr
import pandas as pd

from evaluation.metrics import METRICS
from evaluation.report import aggregate, figures
from evaluation.results import RTF, latest_rows, read_results
from evaluation.runner import RunConfig
from evaluation.systems import AUDIO_FIELDS, MANIFEST_SYSTEMS, System, parse_system, read_items
from studio.common import RunFollower, served_copy, user_errors
from studio.config import StudioConfig

DEFAULT_METRICS = ["wer", "sim"]


def run_folder(config: StudioConfig, name: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name or "") or name.startswith("."):
        raise ValueError(f"run name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return config.data_dir / "eval" / name


def new_run_name(prefix: str = "run") -> str:
    """A name no other visitor's run has: the time and a random suffix."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def visitor_systems(config: StudioConfig, specs: list[str]) -> list[System]:
    """Systems typed by a visitor: a built-in, a checkpoint name, or a folder or checkpoint under the
    studio's readable folders (never an arbitrary server path)."""
    from models import registry

    systems = []
    for spec in specs:
        name, _, source = spec.partition("=")
        source = (source or name).partition(":")[0]
        if source not in MANIFEST_SYSTEMS + ("vocoder",) and source not in registry.list_checkpoints():
            config.check_readable(source, f"system {name!r}: folder")
        systems.append(parse_system(spec))
    return systems


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def check_manifest_audio(config: StudioConfig, manifest: Path) -> None:
    """Every audio path of an uploaded manifest must be an audio file under the test sets' or the shipped
    assets' folders: never the studio's data folder (votes, saved state, runs), whatever exists there."""
    for item in read_items(manifest):
        for field_name in AUDIO_FIELDS:
            path = getattr(item, field_name)
            if path is None:
                continue
            what = f"item {item.key!r}: {field_name} audio"
            if Path(path).suffix.lower() not in AUDIO_SUFFIXES:
                raise ValueError(f"{what} {Path(path).name!r} is not an audio file ({', '.join(AUDIO_SUFFIXES)})")
            config.check_readable(path, what)


def applicable_systems(config: StudioConfig, testset: str | None) -> list[str]:
    """The configured systems that can give audio for some item of the test set (a codec needs
    reference audio, a TTS text): the default choice, so the defaults always produce results."""
    if testset not in config.testsets:
        return []
    try:
        items = read_items(config.testsets[testset])
    except (OSError, ValueError):
        return []
    return [spec for spec in config.systems if any(parse_system(spec).applies_to(item) for item in items)]


def results_table(out: Path) -> pd.DataFrame:
    """One row per system, one column per metric: the mean and its 95 % CI, over all items."""
    rows = latest_rows(read_results(out))
    cells: dict[str, dict[str, str]] = {}
    for entry in aggregate(rows) if rows else []:
        if entry["speaker"] != "all":
            continue
        mean, low, high = entry["mean"], entry["ci_low"], entry["ci_high"]
        text = "n/a" if not math.isfinite(mean) else (
            f"{mean:.3f} [{low:.3f}, {high:.3f}]" if math.isfinite(low) else f"{mean:.3f}")
        cells.setdefault(entry["system"], {})[entry["metric"]] = text
    return pd.DataFrame([{"system": system, **values} for system, values in cells.items()])


def plot(out: str | None, column: str | None):
    """The bar chart (mean with CI per system) of one metric column of a run."""
    if not out or not column:
        return None
    rows = latest_rows(read_results(out))
    plots = figures(rows, aggregate(rows), [column]) if rows else []
    return plots[0] if plots else None


def plan(config: StudioConfig, testset: str | None, upload: str | None, systems: list[str], extra: str,
         metrics: list[str], limit: int, name: str, resume: bool) -> RunConfig:
    """Check the request and turn it into the runner's configuration (an upload is kept in the run)."""
    out = run_folder(config, name)
    if read_results(out) and not resume:
        raise ValueError(f"a run named {name!r} exists: tick Resume to continue it, or choose another name")
    typed = [s for s in re.split(r"[\s,]+", extra or "") if s]
    if not (systems or typed):
        raise ValueError("Choose at least one system")
    unknown = [spec for spec in systems or [] if spec not in config.systems]
    if unknown:
        raise ValueError(f"unknown system {unknown[0]!r}: choose from the menu, or type it under More systems")
    parsed = [parse_system(spec) for spec in systems or []] + visitor_systems(config, typed)
    if len({s.name for s in parsed}) != len(parsed):
        raise ValueError("two systems share a name")
    if not metrics:
        raise ValueError("Choose at least one metric")
    if not 1 <= int(limit) <= config.eval_max_items:
        raise ValueError(f"items: 1 to {config.eval_max_items} in the studio (use `speech-studio eval` for more)")
    if upload:
        suffix = Path(upload).suffix
        if suffix not in (".lst", ".jsonl"):
            raise ValueError(f"the manifest must be a seed-tts-eval .lst or a .jsonl file, not {suffix or 'no suffix'}")
        fresh = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        manifest = out / f"manifest{suffix}"
        checking = out / f".upload-{uuid.uuid4().hex}{suffix}"  # beside it: paths resolve from the run folder
        shutil.copyfile(upload, checking)
        try:
            check_manifest_audio(config, checking)
        except Exception as error:  # nothing of a refused upload stays (a resumed run keeps its manifest)
            checking.unlink()
            if fresh:
                shutil.rmtree(out, ignore_errors=True)
            if isinstance(error, (ValueError, OSError)):  # the message names the upload only
                raise ValueError(str(error).replace(str(checking), Path(upload).name)
                                 .replace(checking.name, Path(upload).name)) from None
            raise
        checking.replace(manifest)
    elif testset in config.testsets:
        manifest = Path(config.testsets[testset])
    else:
        raise ValueError("Choose a test set or upload a manifest")
    return RunConfig(manifest=str(manifest), systems=parsed, metrics=list(metrics), out=str(out),
                     resume=bool(resume), limit=int(limit), public_report=True)


def evaluate(config: StudioConfig, testset, upload, systems, extra, metrics, limit, name, resume,
             progress=gr.Progress()) -> Iterator[tuple]:
    """Runs the bench in a worker thread; yields (table, status, plot metric menu, run folder,
    report files, plot, run name) while it works and when it is done. A blank name is a new run."""
    name = (name or "").strip() or new_run_name()
    run = plan(config, testset, upload, systems, extra, metrics, limit, name, resume)
    out = Path(run.out)
    follow = RunFollower(run, progress)
    for status in follow.steps:
        yield results_table(out), status, gr.skip(), gr.skip(), gr.skip(), gr.skip(), name
    table = results_table(out)
    columns = [c for c in table.columns if c != "system"]
    reports = [served_copy(out / f"report.{kind}", name=f"{name}.{kind}") for kind in ("csv", "html")]
    rows = latest_rows(read_results(out))
    failed = sum(1 for r in rows if r["metric"] == RTF and r["values"] is None)
    status = (f"Done: {len(rows)} results in run `{name}`"
              + (f"; {failed} generations failed (scored as no output)" if failed else "")
              + f". Skipped metrics: {follow.summary['skipped'] or 'none'}. Resume or extend it with the same "
              "run name.")
    quality = [c for c in columns if c != RTF]  # the chart opens on a quality metric, not the speed
    first = (quality or columns or [None])[0]
    yield table, status, gr.update(choices=columns, value=first), str(out), reports, plot(str(out), first), name


def build(config: StudioConfig) -> None:
    testsets = list(config.testsets)
    with gr.Tab("Evaluate"):
        gr.Markdown("Score systems on a test set with the evaluation bench: the same code and report as "
                    "`speech-studio eval`. Audio paths in an uploaded manifest must exist on this server. "
                    "A run with an existing name continues where it stopped when *Resume* is ticked.")
        with gr.Row():
            with gr.Column():
                testset = gr.Dropdown(testsets, value=testsets[0] if testsets else None, label="Built-in test set")
                upload = gr.File(label="…or upload a manifest (.lst or .jsonl)", file_types=[".lst", ".jsonl"],
                                 type="filepath")
                limit = gr.Slider(1, config.eval_max_items, value=min(10, config.eval_max_items), step=1,
                                  label="Items (the first N)")
            with gr.Column():
                systems = gr.CheckboxGroup([(spec.partition("=")[0], spec) for spec in config.systems],
                                           value=applicable_systems(config, testsets[0] if testsets else None),
                                           label="Systems")
                extra = gr.Textbox(label="More systems (NAME=FOLDER_OR_CHECKPOINT[:cfg=2], comma-separated)")
                metrics = gr.CheckboxGroup(list(METRICS), value=DEFAULT_METRICS, label="Metrics",
                                           info="; ".join(f"{n}: {s.description}" for n, s in METRICS.items()))
        with gr.Row():
            name = gr.Textbox(value="", label="Run name", placeholder="blank: a new run with a name of its own")
            resume = gr.Checkbox(value=False, label="Resume a run of this name")
            start = gr.Button("Run evaluation", variant="primary")
        status = gr.Markdown(elem_id="eval-status")
        table = gr.Dataframe(interactive=False, label="Results (mean [95 % CI])", elem_id="eval-table")
        folder = gr.State(None)
        with gr.Row():
            column = gr.Dropdown([], label="Plot metric")
            chart = gr.Plot(label="Systems compared")
        reports = gr.File(label="Report (CSV, HTML)", file_count="multiple", interactive=False)
        # The run's name is shown apart from the name box, so a second click starts a new run (and typing
        # it in the box with Resume ticked continues this one).
        this_run = gr.Textbox(label="This run's name (type it above and tick Resume to continue it)",
                              interactive=False)

        @user_errors
        def run(testset, upload, systems, extra, metrics, limit, name, resume, progress=gr.Progress()):
            yield from evaluate(config, testset, upload, systems, extra, metrics, limit, name, resume, progress)

        start.click(run, [testset, upload, systems, extra, metrics, limit, name, resume],
                    [table, status, column, folder, reports, chart, this_run], api_name="evaluate",
                    concurrency_limit=1)
        testset.change(lambda t: gr.update(value=applicable_systems(config, t)), [testset], [systems],
                       api_name="evaluate_systems")
        column.change(plot, [folder, column], [chart], api_name="evaluate_plot")
