"""Latent explorer: how a codec's latents are distributed for real and generated speech.
The evaluation bench's `latent` metric encodes each system's audio; the tab shows the
per-dimension statistics, the distances to real speech, 2-D projections coloured by system
or speaker, and plays any utterance of the projection."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import gradio as gr
import pandas as pd

from evaluation.metrics.latent import latent_figures, latent_statistics, load_latents
from evaluation.runner import RunConfig, latest_rows, read_results
from evaluation.systems import parse_system, read_items
from models import pipelines
from studio.common import RunFollower, user_errors
from studio.config import StudioConfig
from studio.tabs.evaluate import run_folder


def codec_folder(codec: str) -> str:
    return codec.strip("/").replace("/", "_")  # as the latent metric names it


def views(run: dict | None) -> dict[str, object]:
    """Figure title -> plotly figure, for the run's latents."""
    if not run:
        return {}
    out = Path(run["out"])
    systems = load_latents(out / "latents", codec_folder(run["codec"]))
    if not systems:
        return {}
    speakers = {r["key"]: r.get("speaker") or "?" for r in latest_rows(read_results(out))}
    figures = latent_figures(systems, latent_statistics(systems), speakers)
    return {fig.layout.title.text: fig for fig in figures}


def statistics_table(run: dict) -> pd.DataFrame:
    out = Path(run["out"])
    stats = latent_statistics(load_latents(out / "latents", codec_folder(run["codec"])))
    return pd.DataFrame([{"system": name, "utterances": entry["utterances"], "frames": entry["frames"],
                          f"energy distance to {stats['reference']}": entry.get("energy_distance"),
                          f"Fréchet distance to {stats['reference']}": entry.get("frechet_distance")}
                         for name, entry in stats["systems"].items()])


def explore(config: StudioConfig, testset: str | None, systems: list[str], limit: int, codec: str | None, name: str,
            progress=gr.Progress()) -> Iterator[tuple]:
    """Encode the systems' audio (resuming a run of the same name); yields (status, statistics,
    view menu, first view, utterance menu, run state)."""
    if testset not in config.testsets:
        raise ValueError("Choose a test set")
    if not systems:
        raise ValueError("Choose at least one system")
    if pipelines.checkpoint_kind(codec or "") not in pipelines.LATENT_CODECS:
        raise ValueError(f"{codec!r} is not a latent codec checkpoint (train or publish a Flow-VAE)")
    if not 1 <= int(limit) <= config.eval_max_items:
        raise ValueError(f"items: 1 to {config.eval_max_items}")
    out = run_folder(config, name)
    run = RunConfig(manifest=config.testsets[testset], systems=[parse_system(s) for s in systems], metrics=["latent"],
                    out=str(out), resume=True, limit=int(limit), options={"latent_codec": codec})
    follow = RunFollower(run, progress)
    for status in follow.steps:
        yield status, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    state = {"out": str(out), "codec": codec, "manifest": run.manifest, "systems": systems}
    figures = views(state)
    if not figures:
        raise ValueError("no latents were stored: the systems gave no audio for these items "
                         "(see the report's NaN reasons)")
    titles = list(figures)
    keys = sorted({(r["system"], r["key"]) for r in latest_rows(read_results(out))
                   if r["metric"] == "latent" and r["values"] is not None})
    utterances = [f"{system} | {key}" for system, key in keys]
    yield (f"{len(keys)} utterances encoded with `{codec}` in `{out}`.", statistics_table(state),
           gr.update(choices=titles, value=titles[0]), figures[titles[0]],
           gr.update(choices=utterances, value=None), state)


def utterance_audio(run: dict | None, choice: str | None) -> str | None:
    """The audio file behind one point of the projection (`system | key`)."""
    if not run or not choice:
        return None
    system_name, _, key = choice.partition(" | ")
    system = next(s for s in map(parse_system, run["systems"]) if s.name == system_name)
    item = next(i for i in read_items(run["manifest"]) if i.key == key)
    return str(system.audio_path(item, Path(run["out"]) / "audio"))


def build(config: StudioConfig) -> None:
    testsets = list(config.testsets)
    codecs = pipelines.available_codecs()[1:]
    with gr.Tab("Latent explorer"):
        gr.Markdown("The distribution of a codec's latents: per-dimension posterior means and variances, distances "
                    "of each system's frames to real speech (`gt`), and a 2-D projection of utterance means "
                    "coloured by system or speaker. Hover a point for its system / speaker / key and pick it below "
                    "to hear it.")
        with gr.Row():
            testset = gr.Dropdown(testsets, value=testsets[0] if testsets else None, label="Test set")
            systems = gr.CheckboxGroup([(spec.partition("=")[0], spec) for spec in config.systems],
                                       value=config.systems[:2], label="Systems")
            with gr.Column():
                codec = gr.Dropdown(codecs, value=codecs[0] if codecs else None, allow_custom_value=True,
                                    label="Latent codec")
                limit = gr.Slider(1, config.eval_max_items, value=min(20, config.eval_max_items), step=1,
                                  label="Items")
        with gr.Row():
            name = gr.Textbox(value=time.strftime("latents-%Y%m%d-%H%M%S"), label="Run name (reused: resumed)")
            start = gr.Button("Encode and explore", variant="primary")
        status = gr.Markdown(elem_id="latent-status")
        stats = gr.Dataframe(interactive=False, label="Per system", elem_id="latent-table")
        run = gr.State(None)
        view = gr.Dropdown([], label="View")
        figure = gr.Plot(label="Latents")
        with gr.Row():
            utterance = gr.Dropdown([], label="Hear an utterance (system | key)")
            player = gr.Audio(type="filepath", interactive=False, label="Utterance")

        @user_errors(6)
        def encode(testset, systems, limit, codec, name, progress=gr.Progress()):
            yield from explore(config, testset, systems, limit, codec, name, progress)

        start.click(encode, [testset, systems, limit, codec, name], [status, stats, view, figure, utterance, run],
                    api_name="latents", concurrency_limit=1)
        view.change(lambda r, title: views(r).get(title), [run, view], [figure], api_name="latents_view")
        utterance.change(utterance_audio, [run, utterance], [player], api_name="latents_audio")
