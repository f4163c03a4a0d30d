"""Latent explorer: how a codec's latents are distributed for real and generated speech.
The evaluation bench's `latent` metric encodes each system's audio; the tab shows the
per-dimension statistics, the distances to real speech, 2-D projections coloured by system
or speaker, and plays any utterance of the projection."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import gradio as gr
import pandas as pd

from evaluation.metrics.latent import latent_figures, latent_statistics, load_latents
from evaluation.results import latest_rows, read_results
from evaluation.runner import RunConfig, select_items
from evaluation.systems import parse_system, read_items
from models import pipelines, registry
from models.roles import LATENT_CODEC, TOKEN_CODEC
from studio.common import RunFollower, served_copy, user_errors
from studio.config import StudioConfig
from studio.tabs.evaluate import applicable_systems, new_run_name, run_folder


def run_latents(run: dict) -> dict[str, dict[str, dict]]:
    """The latents of the systems and items this request asked for: a resumed run folder may
    also hold other systems and items from earlier requests, which are left out."""
    names = {spec.partition("=")[0] for spec in run["systems"]}
    keys = set(run["keys"])
    latents = load_latents(Path(run["out"]) / "latents", run["codec"])
    return {system: {key: value for key, value in utterances.items() if key in keys}
            for system, utterances in latents.items() if system in names}


def views(run: dict | None) -> dict[str, object]:
    """Figure title -> plotly figure, for the run's latents."""
    if not run:
        return {}
    out = Path(run["out"])
    systems = run_latents(run)
    if not systems:
        return {}
    speakers = {r["key"]: r.get("speaker") or "?" for r in latest_rows(read_results(out))}
    figures = latent_figures(systems, latent_statistics(systems), speakers)
    return {fig.layout.title.text: fig for fig in figures}


def statistics_table(run: dict) -> pd.DataFrame:
    stats = latent_statistics(run_latents(run))
    return pd.DataFrame([{"system": name, "utterances": entry["utterances"], "frames": entry["frames"],
                          f"energy distance to {stats['reference']}": entry.get("energy_distance"),
                          f"Fréchet distance to {stats['reference']}": entry.get("frechet_distance"),
                          **{f"layer {c['layer']} perplexity (used)": f"{c['perplexity']:.1f} ({c['used']})"
                             for c in entry.get("codebooks", [])}}
                         for name, entry in stats["systems"].items()])


def explore(config: StudioConfig, testset: str | None, systems: list[str], limit: int, codec: str | None, name: str,
            progress=gr.Progress()) -> Iterator[tuple]:
    """Encode the systems' audio (resuming a run of the same name; a blank name is a new run); yields
    (status, statistics, view menu, first view, utterance menu, run state, run name)."""
    name = (name or "").strip() or new_run_name("latents")
    if testset not in config.testsets:
        raise ValueError("Choose a test set")
    if not systems:
        raise ValueError("Choose at least one system")
    if registry.checkpoint_role(codec or "") not in (LATENT_CODEC, TOKEN_CODEC):
        raise ValueError(f"{codec!r} is not a latent or token codec checkpoint (train or publish a Flow-VAE "
                         "or an ALMTokenizer)")
    if not 1 <= int(limit) <= config.eval_max_items:
        raise ValueError(f"items: 1 to {config.eval_max_items}")
    out = run_folder(config, name)
    unknown = [spec for spec in systems if spec not in config.systems]
    if unknown:
        raise ValueError(f"unknown system {unknown[0]!r}: choose from the menu")
    run = RunConfig(manifest=config.testsets[testset], systems=[parse_system(s) for s in systems], metrics=["latent"],
                    out=str(out), resume=True, limit=int(limit), options={"latent_codec": codec})
    follow = RunFollower(run, progress)
    for status in follow.steps:
        yield status, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), name
    keys = [item.key for item in select_items(read_items(run.manifest), run.limit, None)]
    state = {"out": str(out), "codec": codec, "manifest": run.manifest, "systems": systems, "keys": keys}
    figures = views(state)
    if not figures:
        raise ValueError("no latents were stored: the systems gave no audio for these items "
                         "(see the report's NaN reasons)")
    titles = list(figures)
    utterances = [f"{system} | {key}" for system, encoded in run_latents(state).items() for key in sorted(encoded)]
    reference = latent_statistics(run_latents(state))["reference"]
    note = "" if reference == "gt" else (f" This test set has no real speech (or `gt` was not chosen): the distances "
                                         f"are to `{reference}`, not to real speech.")
    yield (f"{len(utterances)} utterances encoded with `{codec}` in run `{name}`.{note}", statistics_table(state),
           gr.update(choices=titles, value=titles[0]), figures[titles[0]],
           gr.update(choices=utterances, value=None), state, name)


def utterance_audio(run: dict | None, choice: str | None) -> str | None:
    """The audio file behind one point of the projection (`system | key`)."""
    if not run or not choice:
        return None
    system_name, _, key = choice.partition(" | ")
    system = next((s for s in map(parse_system, run["systems"]) if s.name == system_name), None)
    item = next((i for i in read_items(run["manifest"]) if i.key == key), None)
    if system is None or item is None or key not in run["keys"]:
        raise ValueError(f"no utterance {choice!r} in this run")
    return served_copy(system.audio_path(item, Path(run["out"]) / "audio"))


def build(config: StudioConfig) -> None:
    testsets = list(config.testsets)
    codecs = pipelines.available_latent_codecs() + pipelines.available_token_codecs()
    with gr.Tab("Latent explorer"):
        gr.Markdown("The distribution of a codec's latents: per-dimension posterior means and variances, distances "
                    "of each system's frames to real speech (`gt`), and a 2-D projection of utterance means "
                    "coloured by system or speaker. A token codec (ALMTokenizer) also shows each layer's codebook "
                    "usage and perplexity; its frames are the summed codewords of its tokens. Hover a point for "
                    "its system / speaker / key and pick it below to hear it.")
        with gr.Row():
            testset = gr.Dropdown(testsets, value=testsets[0] if testsets else None, label="Test set")
            systems = gr.CheckboxGroup([(spec.partition("=")[0], spec) for spec in config.systems],
                                       value=applicable_systems(config, testsets[0] if testsets else None),
                                       label="Systems")
            with gr.Column():
                codec = gr.Dropdown(codecs, value=codecs[0] if codecs else None, allow_custom_value=True,
                                    label="Codec (latent or token)")
                limit = gr.Slider(1, config.eval_max_items, value=min(5, config.eval_max_items), step=1,
                                  label="Items")
        with gr.Row():
            name = gr.Textbox(value="", label="Run name (reused: resumed)",
                              placeholder="blank: a new run with a name of its own")
            start = gr.Button("Encode and explore", variant="primary")
        status = gr.Markdown(elem_id="latent-status")
        stats = gr.Dataframe(interactive=False, label="Per system", elem_id="latent-table")
        run = gr.State(None)
        view = gr.Dropdown([], label="View")
        figure = gr.Plot(label="Latents")
        with gr.Row():
            utterance = gr.Dropdown([], label="Hear an utterance (system | key)")
            player = gr.Audio(type="filepath", interactive=False, label="Utterance")

        @user_errors
        def encode(testset, systems, limit, codec, name, progress=gr.Progress()):
            yield from explore(config, testset, systems, limit, codec, name, progress)

        start.click(encode, [testset, systems, limit, codec, name],
                    [status, stats, view, figure, utterance, run, name],
                    api_name="latents", concurrency_limit=1)
        view.change(lambda r, title: views(r).get(title), [run, view], [figure], api_name="latents_view")
        testset.change(lambda t: gr.update(value=applicable_systems(config, t)), [testset], [systems],
                       api_name="latents_systems")
        utterance.change(user_errors(utterance_audio), [run, utterance], [player], api_name="latents_audio")
