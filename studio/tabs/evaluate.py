"""Evaluate: the evaluation bench (evaluation.runner) on a built-in or uploaded test set, with a
progress bar, a live results table, plots, and the CSV / HTML report; runs resume by name."""

from __future__ import annotations

import math
import re
import shutil
import time
from pathlib import Path
from typing import Iterator

import gradio as gr
import pandas as pd

from evaluation.metrics import METRICS
from evaluation.report import aggregate, figures
from evaluation.runner import RunConfig, latest_rows, read_results
from evaluation.systems import parse_system
from studio.config import StudioConfig
from studio.common import RunFollower, user_errors

DEFAULT_METRICS = ["wer", "sim"]


def run_folder(config: StudioConfig, name: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name or "") or name.startswith("."):
        raise ValueError(f"run name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return config.data_dir / "eval" / name


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
    specs = list(systems or []) + [s for s in re.split(r"[\s,]+", extra or "") if s]
    if not specs:
        raise ValueError("Choose at least one system")
    parsed = [parse_system(spec) for spec in specs]
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
        out.mkdir(parents=True, exist_ok=True)
        manifest = out / f"manifest{suffix}"
        shutil.copyfile(upload, manifest)
    elif testset in config.testsets:
        manifest = Path(config.testsets[testset])
    else:
        raise ValueError("Choose a test set or upload a manifest")
    return RunConfig(manifest=str(manifest), systems=parsed, metrics=list(metrics), out=str(out),
                     resume=bool(resume), limit=int(limit))


def evaluate(config: StudioConfig, testset, upload, systems, extra, metrics, limit, name, resume,
             progress=gr.Progress()) -> Iterator[tuple]:
    """Runs the bench in a worker thread; yields (table, status, plot metric menu, run folder,
    report files, plot) while it works and when it is done."""
    run = plan(config, testset, upload, systems, extra, metrics, limit, name, resume)
    out = Path(run.out)
    follow = RunFollower(run, progress)
    for status in follow.steps:
        yield results_table(out), status, gr.skip(), gr.skip(), gr.skip(), gr.skip()
    table = results_table(out)
    columns = [c for c in table.columns if c != "system"]
    reports = [str(out / "report.csv"), str(out / "report.html")]
    status = (f"Done: {len(latest_rows(read_results(out)))} results in `{out}`. Skipped metrics: "
              f"{follow.summary['skipped'] or 'none'}. Resume or extend it with the same run name.")
    first = columns[0] if columns else None
    yield table, status, gr.update(choices=columns, value=first), str(out), reports, plot(str(out), first)


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
                                           value=config.systems[:2], label="Systems")
                extra = gr.Textbox(label="More systems (NAME=FOLDER_OR_CHECKPOINT[:cfg=2], comma-separated)")
                metrics = gr.CheckboxGroup(list(METRICS), value=DEFAULT_METRICS, label="Metrics",
                                           info="; ".join(f"{n}: {s.description}" for n, s in METRICS.items()))
        with gr.Row():
            name = gr.Textbox(value=time.strftime("run-%Y%m%d-%H%M%S"), label="Run name")
            resume = gr.Checkbox(value=False, label="Resume a run of this name")
            start = gr.Button("Run evaluation", variant="primary")
        status = gr.Markdown(elem_id="eval-status")
        table = gr.Dataframe(interactive=False, label="Results (mean [95 % CI])", elem_id="eval-table")
        folder = gr.State(None)
        with gr.Row():
            column = gr.Dropdown([], label="Plot metric")
            chart = gr.Plot(label="Systems compared")
        reports = gr.File(label="Report (CSV, HTML)", file_count="multiple", interactive=False)

        @user_errors(6)
        def run(testset, upload, systems, extra, metrics, limit, name, resume, progress=gr.Progress()):
            yield from evaluate(config, testset, upload, systems, extra, metrics, limit, name, resume, progress)

        start.click(run, [testset, upload, systems, extra, metrics, limit, name, resume],
                    [table, status, column, folder, reports, chart], api_name="evaluate", concurrency_limit=1)
        column.change(plot, [folder, column], [chart], api_name="evaluate_plot")
