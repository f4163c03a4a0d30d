"""Reports of an evaluation run: `report.csv`, `report.json` and one self-contained `report.html`.

Aggregates per system x metric column, over all items and per speaker: mean, standard
deviation, a 95 % bootstrap confidence interval of the mean, n scored and n NaN (with
the reasons). WER is given two ways: the mean of per-utterance WER (seed-tts-eval's
convention) and corpus WER = all errors / all reference words, with its substitution,
deletion and insertion rates. Systems scored on the same items are also compared pairwise: the mean
of their per-item differences with its bootstrap interval (`paired`), far tighter than two overlapping
intervals of the means.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import plotly
import plotly.graph_objects as go

from evaluation.metrics import METRICS
from evaluation.metrics.latent import latent_figures, latent_statistics, load_latents
from evaluation.results import RTF, latest_rows, read_results
from models.files import write_text_atomic

BOOTSTRAP = 1000
# Bookkeeping columns: kept in the results, not averaged in the report.
NOT_AVERAGED = {"substitutions", "deletions", "insertions", "reference_words", "transcript", "generation_seconds",
                "audio_seconds", "latent_frames"}
CORPUS_WER = ("wer_corpus", "substitution_rate", "deletion_rate", "insertion_rate")
ORDER = [c for spec in METRICS.values() for c in spec.columns if c not in NOT_AVERAGED]
ORDER[ORDER.index("cer") + 1:ORDER.index("cer") + 1] = list(CORPUS_WER)
ORDER += ["rtf", "bitrate"]  # bitrate: what a codec system spent, recorded with its RTF
HIGHER_IS_BETTER = {c: b for spec in METRICS.values() for c, b in spec.higher_is_better.items()}
HIGHER_IS_BETTER.update({c: False for c in CORPUS_WER + ("rtf", "bitrate")})
CSV_FIELDS = ("system", "speaker", "metric", "mean", "std", "ci_low", "ci_high", "n", "n_nan")


def bootstrap_ci(values: np.ndarray, seed: int = 0, statistic=np.mean, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over resampled rows (axis 0)."""
    if len(values) == 0:
        return math.nan, math.nan
    if len(values) == 1:
        value = float(statistic(values))
        return value, value
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))
    stats = np.array([statistic(values[d]) for d in draws])
    tail = (1 - level) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def _column_order(column: str) -> tuple[int, str]:
    return (ORDER.index(column) if column in ORDER else len(ORDER), column)


def _columns(metric: str) -> tuple[str, ...]:
    if metric == RTF:
        return ("rtf",)
    return METRICS[metric].columns if metric in METRICS else ()


def _summary(values: list[float], seed: int) -> dict:
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    low, high = bootstrap_ci(finite, seed)
    return {"mean": float(finite.mean()) if len(finite) else math.nan,
            "std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
            "ci_low": low, "ci_high": high, "n": int(len(finite)), "n_nan": int(len(array) - len(finite))}


def _corpus_wer(rows: list[dict], seed: int) -> dict[str, dict]:
    counts = np.array([[r["values"][k] for k in ("substitutions", "deletions", "insertions", "reference_words")]
                       for r in rows if r["values"] is not None], dtype=np.float64)
    n_nan = sum(r["values"] is None for r in rows)
    result = {}
    for name, column in zip(CORPUS_WER, (None, 0, 1, 2)):
        def ratio(c, column=column):
            errors = c[:, :3].sum() if column is None else c[:, column].sum()
            return errors / max(c[:, 3].sum(), 1)

        if len(counts) == 0:
            result[name] = {"mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0,
                            "n_nan": n_nan}
            continue
        low, high = bootstrap_ci(counts, seed, ratio)
        result[name] = {"mean": float(ratio(counts)), "std": math.nan, "ci_low": low, "ci_high": high,
                        "n": len(counts), "n_nan": n_nan}
    return result


def aggregate(rows: list[dict], seed: int = 0) -> list[dict]:
    """Aggregate rows per (system, speaker in {all, each}, metric column)."""
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for row in rows:
        for speaker in ("all", row.get("speaker") or "?"):
            groups[(row["system"], speaker, row["metric"])].append(row)
    table = []
    for (system, speaker, metric), members in sorted(groups.items()):
        columns = [c for c in _columns(metric) if c not in NOT_AVERAGED]
        extra = {c for r in members if r["values"] for c, v in r["values"].items()
                 if c not in NOT_AVERAGED and c not in columns and isinstance(v, (int, float))}
        for column in columns + sorted(extra):
            values = [math.nan if r["values"] is None else r["values"].get(column) for r in members]
            values = [v for v in values if v is not None]  # a column a row does not have (e.g. si_sdr_i)
            if values:
                table.append({"system": system, "speaker": speaker, "metric": column, **_summary(values, seed)})
        if metric == "wer":
            for column, stats in _corpus_wer(members, seed).items():
                table.append({"system": system, "speaker": speaker, "metric": column, **stats})
    return table


def paired_differences(rows: list[dict], seed: int = 0) -> list[dict]:
    """Per metric column and pair of systems (a, b): the mean of a - b over the items both scored, its
    95 % bootstrap interval, and the share of items on which a is better. A system with one value on
    every item (the ground truth scored against itself) is left out of that column."""
    scores: dict[str, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        for column, value in (row["values"] or {}).items():
            if column not in NOT_AVERAGED and isinstance(value, (int, float)) and math.isfinite(value):
                scores[column][row["system"]][row["key"]] = float(value)
    table = []
    for column in sorted(scores, key=_column_order):
        systems = sorted(s for s, values in scores[column].items() if np.ptp(list(values.values())) > 1e-6)
        for i, a in enumerate(systems):
            for b in systems[i + 1:]:
                keys = sorted(scores[column][a].keys() & scores[column][b].keys())
                if len(keys) < 2:
                    continue
                diff = np.array([scores[column][a][k] - scores[column][b][k] for k in keys])
                low, high = bootstrap_ci(diff, seed)
                higher = HIGHER_IS_BETTER.get(column, True)
                table.append({"metric": column, "a": a, "b": b, "n": len(keys), "mean": float(diff.mean()),
                              "ci_low": low, "ci_high": high,
                              "a_better": float(((diff > 0) if higher else (diff < 0)).mean())})
    return table


SEEDED = re.compile(r"^(?P<name>.+)_s(?P<seed>\d+)$")  # one system's run under one seed: NAME_sK


def pool_seeds(rows: list[dict]) -> list[dict]:
    """The rows with every system run under two or more seeds (named NAME_s0, NAME_s1, ...) replaced by one
    system NAME whose value per item is the mean over its seeds; other systems as they are. Sampled TTS
    varies per draw as much as the effects compared, so it is compared on per-item means over seeds and
    bootstrapped over items. A seed whose output could not be scored is left out of its item's mean. A
    name that is also a system of its own is not pooled. Empty when no system has two seeds."""
    seeds: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if match := SEEDED.match(row["system"]):
            seeds[match["name"]].add(match["seed"])
    names = {row["system"] for row in rows}
    pooled = {name for name, found in seeds.items() if len(found) > 1 and name not in names}  # NAME itself: ambiguous
    if not pooled:
        return []
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    out = []
    for row in rows:
        match = SEEDED.match(row["system"])
        if match and match["name"] in pooled:
            groups[(match["name"], row["key"], row["metric"])].append(row)
        else:
            out.append(row)
    for (name, key, metric), members in groups.items():
        scored = [r["values"] for r in members if r["values"] is not None]
        columns = {c for v in scored for c, x in v.items() if isinstance(x, (int, float)) and not isinstance(x, bool)}
        finite = {c: [v[c] for v in scored if c in v and math.isfinite(v[c])] for c in sorted(columns)}
        values = {c: float(np.mean(x)) if x else math.nan for c, x in finite.items()} if scored else None
        out.append({"system": name, "key": key, "speaker": members[0].get("speaker"), "metric": metric,
                    "values": values, **({} if scored else {"reason": members[0].get("reason", "?")})})
    return out


def read_meta(out: str | os.PathLike) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "results").glob("shard-*.meta.json"))]


_SERVER_PATH = re.compile(r"(?:/[^\s/:'\"]+){2,}")  # an absolute path of two or more parts


def nan_reasons(rows: list[dict]) -> list[dict]:
    counter = Counter((r["system"], r["metric"], r.get("reason", "?")) for r in rows if r["values"] is None)
    return [{"system": s, "metric": m, "reason": reason, "count": n} for (s, m, reason), n in counter.most_common()]


def card_metrics(out: str | os.PathLike, system: str, label: str) -> dict:
    """One system's overall means from a finished run, keyed `<label>/<metric>`, for a model card; a system
    run under several seeds (NAME_s0, NAME_s1, ...) is found by NAME, pooled over its seeds."""
    report = Path(out) / "report.json"
    if not report.is_file():
        raise FileNotFoundError(f"{out}: no report.json (run `speech-studio report {out}` first)")
    data = json.loads(report.read_text())
    table = data["aggregates"] + data.get("pooled_over_seeds", {}).get("aggregates", [])
    metrics = {f"{label}/{row['metric']}": round(row["mean"], 4) for row in table
               if row["system"] == system and row["speaker"] == "all" and row["mean"] is not None}
    if not metrics:
        systems = sorted({row["system"] for row in table})
        raise ValueError(f"{out}: no results for system {system!r} (it has: {', '.join(systems)})")
    return metrics


def write_report(out: str | os.PathLike, seed: int = 0, public: bool = False) -> list[Path]:
    """Write report.csv, report.json and report.html into the run folder; returns their paths.
    A public report's HTML (the studio serves it to visitors) leaves out what only the server's
    operator should see: command lines, commit, hardware, server paths and metric model files."""
    out = Path(out)
    rows = latest_rows(read_results(out))
    if not rows:
        raise ValueError(f"{out}: no results to report (run `speech-studio eval` first)")
    table = aggregate(rows, seed)
    meta = read_meta(out)
    latents = {}
    for codec_dir in sorted(p for p in (out / "latents").glob("*") if p.is_dir()):
        systems = load_latents(out / "latents", codec_dir.name)
        if systems:
            speakers = {r["key"]: r.get("speaker") or "?" for r in rows}
            stats = latent_statistics(systems, seed=seed)
            latents[codec_dir.name] = (stats, latent_figures(systems, stats, speakers, seed))

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for entry in table:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in entry.items()})
    paths = [write_text_atomic(out / "report.csv", buffer.getvalue())]
    paired = paired_differences(rows, seed)
    pooled_rows = pool_seeds(rows)
    pooled = {"aggregates": aggregate(pooled_rows, seed), "paired": paired_differences(pooled_rows, seed)}
    document = {"meta": meta, "aggregates": table, "paired": paired, "nan_reasons": nan_reasons(rows),
                "latents": {codec: stats for codec, (stats, _) in latents.items()},
                **({"pooled_over_seeds": pooled} if pooled_rows else {})}
    paths.append(write_text_atomic(out / "report.json", json.dumps(_finite(document), indent=1) + "\n"))
    paths.append(write_text_atomic(out / "report.html", _html(out, rows, table, meta, latents, public)))
    text = markdown(table, paired)
    if pooled_rows:
        text += ("\n## Pooled over seeds\n\nSystems run under several seeds (NAME_s0, NAME_s1, ...) as one system "
                 "NAME: each item's mean over its seeds, bootstrapped over items.\n\n"
                 + markdown([e for e in pooled["aggregates"] if e["speaker"] == "all"], pooled["paired"]))
    paths.append(write_text_atomic(out / "report.md", text))
    return paths


def markdown(table: list[dict], paired: list[dict] = ()) -> str:
    """Markdown tables of the means (CI in brackets), overall then per speaker, and of the paired
    differences between systems, for READMEs and model cards."""
    columns = sorted({e["metric"] for e in table}, key=_column_order)
    lookup = {(e["system"], e["speaker"], e["metric"]): e for e in table}
    systems = sorted({e["system"] for e in table})
    speakers = ["all"] + sorted({e["speaker"] for e in table} - {"all"})

    def cell(entry: dict | None, ci: bool) -> str:
        if entry is None:
            return ""
        text = _fmt(entry["mean"])
        return f"{text} [{_fmt(entry['ci_low'])}, {_fmt(entry['ci_high'])}]" if ci else text

    lines = ["| system | n | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 2)]
    for system in systems:
        n = max((e["n"] for (s, sp, _), e in lookup.items() if s == system and sp == "all"), default=0)
        lines.append(f"| {system} | {n} | " + " | ".join(cell(lookup.get((system, "all", c)), True)
                                                       for c in columns) + " |")
    if speakers[1:]:
        lines += ["", "| speaker | system | " + " | ".join(columns) + " |", "|" + " --- |" * (len(columns) + 2)]
    for speaker in speakers[1:]:
        for system in systems:
            if any((system, speaker, c) in lookup for c in columns):
                lines.append(f"| {speaker} | {system} | " + " | ".join(cell(lookup.get((system, speaker, c)), False)
                                                                     for c in columns) + " |")
    if paired:
        lines += ["", "Paired differences over the items both systems scored (a - b, 95 % bootstrap interval; "
                  "a better: share of items on which a is better):", "",
                  "| metric | a | b | n | a - b | a better |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {e['metric']} | {e['a']} | {e['b']} | {e['n']} | {_fmt(e['mean'])} "
                  f"[{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}] | {e['a_better']:.2f} |" for e in paired]
    return "\n".join(lines) + "\n"


def _finite(obj):
    """NaN is not JSON: write null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _fmt(value: float) -> str:
    if not isinstance(value, float) or not math.isfinite(value):
        return "–"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def figures(rows: list[dict], table: list[dict], columns: list[str] | None = None) -> list[go.Figure]:
    """Per metric column (all, or `columns`): a bar chart of system means with their CIs, and
    the per-utterance distributions when there is more than one utterance."""
    overall = [e for e in table if e["speaker"] == "all"]
    figures = []
    for column in sorted({e["metric"] for e in overall} & set(columns or [e["metric"] for e in overall]),
                         key=_column_order):
        entries = [e for e in overall if e["metric"] == column and math.isfinite(e["mean"])]
        if not entries:
            continue
        fig = go.Figure(go.Bar(
            x=[e["system"] for e in entries], y=[e["mean"] for e in entries],
            error_y={"type": "data", "symmetric": False,
                     "array": [e["ci_high"] - e["mean"] for e in entries],
                     "arrayminus": [e["mean"] - e["ci_low"] for e in entries]}))
        fig.update_layout(title=f"{column}: mean with 95 % bootstrap CI", yaxis_title=column, height=360)
        figures.append(fig)
        per_utt = defaultdict(list)
        for row in rows:
            value = (row["values"] or {}).get(column)
            if isinstance(value, (int, float)) and math.isfinite(value):
                per_utt[row["system"]].append(value)
        if any(len(v) > 1 for v in per_utt.values()):
            box = go.Figure([go.Box(y=v, name=s, boxpoints="outliers") for s, v in sorted(per_utt.items())])
            box.update_layout(title=f"{column}: per-utterance distribution", yaxis_title=column, height=360)
            figures.append(box)
    return figures


def _html(out: Path, rows: list[dict], table: list[dict], meta: list[dict], latents: dict,
          public: bool = False) -> str:
    first = meta[0] if meta else {}
    models = {}
    for m in meta:
        for name, info in m.get("metrics", {}).items():
            models.setdefault(name, {k: v for k, v in info.items() if k not in ("columns", "needs")})
    header_rows = [
        ["git commit", html.escape(", ".join(sorted({m.get("git_commit", "?") for m in meta})))],
        ["commands", "<br>".join(f"<code>{html.escape(m.get('command', '?'))}</code>" for m in meta)],
        ["manifest", html.escape(str(first.get("manifest")))],
        ["systems", html.escape(json.dumps(first.get("systems", {})))],
        ["device", html.escape(", ".join(sorted({str(m.get("device")) for m in meta})))],
        ["hardware", html.escape(json.dumps(first.get("hardware", {})))],
        ["seed (bootstrap, sampling)", html.escape(str(first.get("seed")))],
        ["shards", html.escape(", ".join(m.get("shard", "?") for m in meta))],
        ["started / finished",
         html.escape(f"{first.get('started')} / {meta[-1].get('finished', 'unfinished') if meta else '?'}")],
    ]
    if public:
        private = {"git commit", "commands", "hardware"}
        header_rows = [row for row in header_rows if row[0] not in private]
        header_rows[0:2] = [["manifest", html.escape(Path(str(first.get("manifest"))).name)],
                            ["systems", html.escape(", ".join(first.get("systems", {})))]]
        models = {}
    for name, info in sorted(models.items()):
        header_rows.append([f"metric {html.escape(name)}",
                            "<br>".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in info.items())])
    for m in meta:
        for name, timing in m.get("timing", {}).items():
            header_rows.append([f"time {html.escape(name)} (shard {html.escape(m.get('shard', '?'))})",
                                f"{timing['units']} in {timing['seconds']} s = "
                                f"{timing['units_per_minute']} per minute"])
    for m in meta:
        for name, reason in m.get("skipped", {}).items():
            reason = _SERVER_PATH.sub(lambda m: Path(m.group(0)).name, reason) if public else reason
            header_rows.append([f"skipped {html.escape(name)}", html.escape(reason)])

    overall = [e for e in table if e["speaker"] == "all"]
    systems = sorted({e["system"] for e in overall})
    columns = sorted({e["metric"] for e in overall}, key=_column_order)
    lookup = {(e["system"], e["metric"]): e for e in overall}
    summary = []
    for column in columns:
        better = HIGHER_IS_BETTER.get(column)
        cells = [html.escape(column) + ("" if better is None else (" ↑" if better else " ↓"))]
        for system in systems:
            e = lookup.get((system, column))
            cells.append("" if e is None else f"{_fmt(e['mean'])} <small>[{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}] "
                                              f"n={e['n']}" + (f", NaN {e['n_nan']}" if e["n_nan"] else "")
                                              + "</small>")
        summary.append(cells)

    speakers = sorted({e["speaker"] for e in table if e["speaker"] != "all"})
    per_speaker = []
    key_columns = [c for c in ("wer", "wer_corpus", "sim", "pesq_wb", "stoi", "dnsmos_ovrl", "si_sdr") if c in columns]
    full = {(e["system"], e["speaker"], e["metric"]): e for e in table}
    for speaker in speakers:
        for system in systems:
            cells = [html.escape(speaker), html.escape(system)]
            present = False
            for column in key_columns:
                e = full.get((system, speaker, column))
                present |= e is not None
                cells.append("" if e is None else f"{_fmt(e['mean'])} <small>(n={e['n']})</small>")
            if present:
                per_speaker.append(cells)

    reasons = nan_reasons(rows)
    if public:  # a reason may quote a server path: keep only its file name
        reasons = [{**r, "reason": _SERVER_PATH.sub(lambda m: Path(m.group(0)).name, r["reason"])} for r in reasons]
    latent_html = []
    for codec, (stats, figs) in latents.items():
        body = [[html.escape(name), str(entry["utterances"]), str(entry["frames"]),
                 _fmt(entry.get("energy_distance", math.nan)), _fmt(entry.get("frechet_distance", math.nan))]
                for name, entry in stats["systems"].items()]
        latent_html.append(f"<h2>Latents: codec {html.escape(codec)} "
                           f"(reference: {html.escape(stats['reference'])})</h2>"
                           + _table(["system", "utterances", "frames", "energy distance", "Fréchet distance"], body))
        latent_html.extend(f.to_html(full_html=False, include_plotlyjs=False) for f in figs)

    plots = [f.to_html(full_html=False, include_plotlyjs=False) for f in figures(rows, table)]
    plotly_js = f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Evaluation report</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:14px}"
        "th{background:#f3f3f3}small{color:#666}</style>", plotly_js, "</head><body>",
        f"<h1>Evaluation report: {html.escape(out.name)}</h1>",
        _table(["", ""], header_rows),
        "<h2>Summary (mean, 95 % bootstrap CI, n)</h2>", _table(["metric"] + systems, summary),
        "<p><small>wer is the mean of per-utterance WER (seed-tts-eval); wer_corpus is all errors over all "
        "reference words, split into substitution, deletion and insertion rates.</small></p>",
    ]
    if per_speaker:
        parts += ["<h2>Per speaker</h2>", _table(["speaker", "system"] + key_columns, per_speaker)]
    if reasons:
        parts += ["<h2>NaN results and why</h2>",
                  _table(["system", "metric", "reason", "count"],
                         [[html.escape(r["system"]), html.escape(r["metric"]), html.escape(r["reason"]),
                           str(r["count"])] for r in reasons])]
    parts += ["<h2>Charts</h2>", *plots, *latent_html, "</body></html>"]
    return "\n".join(parts)
