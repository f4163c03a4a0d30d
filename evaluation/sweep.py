"""Guidance-scale sweeps through the batch runner: one TTS model at several CFG scales (one
system each) on one text spoken with several seeds (one item each), so every scale hears the
same seeds. Curves of metric means with 95 % bootstrap CIs against the scale."""

from __future__ import annotations

import json
import math
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from evaluation.metrics import METRICS
from evaluation.report import aggregate
from evaluation.results import latest_rows, read_results
from evaluation.runner import RunConfig
from evaluation.systems import System
from models.files import write_text_atomic
from models.pipelines import CFG_RANGE
from models.text import check_text

HEADLINE = {"dnsmos": "dnsmos_ovrl"}  # the column plotted for a metric (else its first column)
MAX_POINTS = 60  # scales x seeds the studio runs at once


def system_name(cfg: float) -> str:
    return f"cfg{cfg:g}"


def parse_scales(text: str) -> list[float]:
    """"1, 1.5, 2" -> [1.0, 1.5, 2.0]: sorted, unique, each in the pipelines' CFG range."""
    try:
        scales = sorted({float(x) for x in text.replace(",", " ").split()})
    except ValueError:
        raise ValueError(f"CFG values must be numbers separated by commas, not {text!r}") from None
    low, high = CFG_RANGE
    if not scales or not all(low <= s <= high for s in scales):
        raise ValueError(f"give one or more CFG values between {low:g} and {high:g}")
    return scales


def sweep_config(model: str, text: str, scales: list[float], seeds: int, metrics: list[str], out: str | Path,
                 reference: str | Path | None = None, reference_text: str | None = None,
                 resume: bool = False) -> RunConfig:
    """Write the sweep's manifest (one item per seed, continuing `reference` when given) into
    `out` and return the runner configuration."""
    check_text(text)  # a clear line for empty or unspeakable text, before any model runs
    if not 1 <= seeds or len(scales) * seeds > MAX_POINTS:
        raise ValueError(f"CFG values x seeds must be between 1 and {MAX_POINTS}, not {len(scales)} x {seeds}")
    if reference is not None and not reference_text:
        raise ValueError("the reference clip needs its transcript")
    out = Path(out)
    rows = [{"id": f"seed{k}", "text": text.strip(),
             **({"prompt_wav": str(Path(reference).resolve()), "prompt_text": reference_text} if reference else {})}
            for k in range(seeds)]
    manifest = write_text_atomic(out / "sweep.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    systems = [System(system_name(cfg), "tts", model, (("cfg", cfg),)) for cfg in scales]
    return RunConfig(manifest=str(manifest), systems=systems, metrics=metrics, out=str(out), resume=resume)


def headline(metric: str) -> str:
    return HEADLINE.get(metric, METRICS[metric].columns[0])


def curves(out: str | Path, scales: list[float], metrics: list[str]) -> tuple[list[dict], go.Figure]:
    """Per scale and headline column: mean, CI and n; and one subplot per column against CFG."""
    rows = latest_rows(read_results(out))
    table = {(e["system"], e["metric"]): e for e in aggregate(rows) if e["speaker"] == "all"} if rows else {}
    columns = [headline(m) for m in metrics if m in METRICS]
    points = []
    for column in columns:
        for cfg in scales:
            entry = table.get((system_name(cfg), column))
            if entry is not None and math.isfinite(entry["mean"]):
                points.append({"cfg": cfg, "metric": column, "mean": entry["mean"], "ci_low": entry["ci_low"],
                               "ci_high": entry["ci_high"], "n": entry["n"], "n_nan": entry["n_nan"]})
    fig = make_subplots(rows=1, cols=max(len(columns), 1), subplot_titles=columns)
    for col, column in enumerate(columns, start=1):
        mine = [p for p in points if p["metric"] == column]
        fig.add_trace(go.Scatter(
            x=[p["cfg"] for p in mine], y=[p["mean"] for p in mine], mode="lines+markers", name=column,
            error_y={"type": "data", "symmetric": False,
                     "array": [p["ci_high"] - p["mean"] if math.isfinite(p["ci_high"]) else 0 for p in mine],
                     "arrayminus": [p["mean"] - p["ci_low"] if math.isfinite(p["ci_low"]) else 0 for p in mine]}),
            row=1, col=col)
        fig.update_xaxes(title_text="CFG scale", row=1, col=col)
    fig.update_layout(height=340, showlegend=False, margin={"l": 50, "r": 20, "t": 40, "b": 50},
                      title="mean with 95 % bootstrap CI over seeds")
    return points, fig


def per_utterance(out: str | Path, scales: list[float], metrics: list[str]) -> list[dict]:
    """One row per (scale, seed item): its audio file and headline values (the CSV download)."""
    rows = latest_rows(read_results(out))
    by_unit: dict[tuple[str, str], dict] = {}
    for row in rows:
        entry = by_unit.setdefault((row["system"], row["key"]), {})
        for column, value in (row["values"] or {}).items():
            if isinstance(value, (int, float)):
                entry[column] = value
    wanted = [headline(m) for m in metrics if m in METRICS] + ["rtf"]
    table = []
    for cfg in scales:
        name = system_name(cfg)
        for (system, key), values in sorted(by_unit.items()):
            if system == name:
                table.append({"cfg": cfg, "item": key, "audio": str(Path(out) / "audio" / name / f"{key}.wav"),
                              **{c: values.get(c, math.nan) for c in wanted}})
    return table
