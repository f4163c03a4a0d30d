"""CFG lab: one TTS model, one text, several guidance scales x several seeds, run through the
evaluation bench (evaluation.sweep); a grid of the outputs and metric curves against the scale."""

from __future__ import annotations

import csv
import io
import time
import uuid
from pathlib import Path
from typing import Iterator

import gradio as gr
import pandas as pd

from evaluation import sweep
from models import audio, pipelines
from models.files import write_text_atomic
from models.registry import pick_device
from models.text import check_text
from studio.common import RunFollower, reference_voice, served_copy, tts_model_menu, user_errors
from studio.config import StudioConfig
from studio.tabs.synthesize import EXAMPLE_TEXTS

DEFAULT_SCALES = "1.0, 1.5, 2.0, 2.5, 3.0"
METRIC_CHOICES = ["wer", "sim", "dnsmos"]
DEFAULT_METRICS = ["wer", "dnsmos"]  # the default has no reference voice, so no SIM


def run_sweep(config: StudioConfig, model: str | None, text: str, reference: str | None, reference_text: str | None,
              scales: str, seeds: int, metrics: list[str], progress=gr.Progress()) -> Iterator[tuple]:
    """Yields (status, grid rows, curve points, figure, CSV) while running and when done."""
    if not model:
        raise ValueError("Choose a TTS model")
    config.check_model(model)
    pipelines.tts_kind(model)  # a clear error for anything else
    if not metrics:
        raise ValueError("Choose at least one metric")
    if "sim" in metrics and not reference:
        raise ValueError("SIM compares each output with a reference voice: add a reference clip, or untick sim")
    check_text(text)
    values = sweep.parse_scales(scales)
    out = config.data_dir / "cfg_lab" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    if reference:
        audio.save_audio(out / "reference.wav", audio.load_audio(reference, audio.SAMPLE_RATE,
                                                                 max_seconds=pipelines.MAX_REFERENCE_UPLOAD_SECONDS))
        reference = out / "reference.wav"
        if not (reference_text or "").strip():
            from evaluation.metrics.asr import transcriber

            reference_text = transcriber(pick_device(None))(audio.load_audio(reference))
    run = sweep.sweep_config(model, text, values, int(seeds), list(metrics), out, reference,
                             (reference_text or "").strip() or None)
    follow = RunFollower(run, progress)
    for status in follow.steps:
        yield status, gr.skip(), gr.skip(), gr.skip(), gr.skip()
    points, figure = sweep.curves(out, values, metrics)
    grid = sweep.per_utterance(out, values, metrics)
    made = [row for row in grid if Path(row["audio"]).is_file()]
    if not made:
        raise ValueError(f"{model} gave no audio for this text at any CFG value (see the CSV's reasons)")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(grid[0]) if grid else ["cfg"])
    writer.writeheader()
    writer.writerows(grid)
    table = write_text_atomic(out / "cfg_lab.csv", buffer.getvalue())
    failed = len(values) * int(seeds) - len(made)
    shown = [{**row, "audio": served_copy(row["audio"])} for row in made]
    yield (f"Done: {len(values)} CFG values x {seeds} seeds, {len(made)} outputs"
           + (f", {failed} generations failed" if failed else "") + ".", shown, pd.DataFrame(points).round(3), figure,
           [served_copy(table, name=f"cfg_lab-{out.name}.csv"), served_copy(out / "report.csv",
                                                                          name=f"cfg_lab-{out.name}-means.csv")])


def cell_label(row: dict) -> str:
    scores = ", ".join(f"{k} {v:.3g}" for k, v in row.items() if k not in ("cfg", "item", "audio", "rtf"))
    return f"CFG {row['cfg']:g} · {row['item']}" + (f" · {scores}" if scores else "")


def build(config: StudioConfig) -> None:
    with gr.Tab("CFG lab"):
        gr.Markdown("How the classifier-free guidance scale changes the speech: every CFG value speaks the text "
                    "with the same seeds; the evaluation bench scores each output. CFG 1 is unguided.")
        with gr.Row():
            with gr.Column():
                model = tts_model_menu()
                text = gr.Textbox(label="Text", lines=2, value=EXAMPLE_TEXTS[0])
                reference, reference_text = reference_voice("Reference voice (optional; needed for SIM)")
            with gr.Column():
                scales = gr.Textbox(value=DEFAULT_SCALES, label="CFG values")
                seeds = gr.Slider(1, 10, value=3, step=1, label="Seeds per value")
                metrics = gr.CheckboxGroup(METRIC_CHOICES, value=DEFAULT_METRICS, label="Metrics",
                                           info="sim needs a reference voice")
                start = gr.Button("Run sweep", variant="primary")
        status = gr.Markdown(elem_id="cfg-status")
        figure = gr.Plot(label="Metrics against CFG")
        points = gr.Dataframe(interactive=False, label="Means and 95 % CIs", elem_id="cfg-table")
        grid = gr.State([])
        files = gr.File(label="Results (CSV)", file_count="multiple", interactive=False)

        @gr.render(inputs=[grid])
        def show(rows):
            for cfg in sorted({row["cfg"] for row in rows}):
                with gr.Row():
                    for row in (r for r in rows if r["cfg"] == cfg):
                        with gr.Column(min_width=160):  # the label above the player: its icons would cover it
                            gr.Markdown(cell_label(row))
                            gr.Audio(row["audio"], show_label=False, interactive=False)

        @user_errors
        def run(model, text, reference, reference_text, scales, seeds, metrics, progress=gr.Progress()):
            yield from run_sweep(config, model, text, reference, reference_text, scales, seeds, metrics, progress)

        start.click(run, [model, text, reference, reference_text, scales, seeds, metrics],
                    [status, grid, points, figure, files], api_name="cfg_sweep", concurrency_limit=1)
