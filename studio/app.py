"""Builds the Gradio studio from its tabs and launches it."""

from __future__ import annotations

import os
import re

import gradio as gr
from gradio import utils as gr_utils

from studio.common import SERVED_MAX_AGE_S
from studio.config import StudioConfig
from studio.tabs import cfg_lab, evaluate, latents, listen, resynthesis, speech, synthesize

TITLE = "Speech Studio"
INTRO = (
    "# Speech Studio\n"
    "Hear, compare and measure speech generators side by side. Models run on the GPU when "
    "there is one, on the CPU otherwise."
)
QUEUE_CONCURRENCY = 2  # two workers: one generation per CPU core


class StudioBlocks(gr.Blocks):
    """gr.Blocks whose refusal of a call with too few values reaches the client as a message: Gradio's
    own is a plain exception, which a raw REST client sees as `{"error": null}`."""

    def validate_inputs(self, block_fn, inputs: list) -> None:
        if len(inputs) < len(block_fn.inputs):
            names = ", ".join(block_fn.input_parameter_names or [])
            raise gr.Error(f"/{block_fn.api_name} takes {len(block_fn.inputs)} values ({names}); it got "
                           f"{len(inputs)}", print_exception=False)
        super().validate_inputs(block_fn, inputs)


def build_app(config: StudioConfig | None = None) -> gr.Blocks:
    config = config or StudioConfig()
    with StudioBlocks(title=TITLE, delete_cache=(3600, SERVED_MAX_AGE_S)) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            synthesize.build(config)
            for task in speech.TABS:
                speech.build(task)
            listen.build(config)
            cfg_lab.build(config)
            evaluate.build(config)
            latents.build(config)
            resynthesis.build()
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY)
    demo.studio_config = config
    name_api_parameters(demo)
    return demo


def _slug(label: str) -> str:
    """'Its transcript (blank: transcribed by the ASR)' -> 'its_transcript'."""
    return re.sub(r"[^a-z0-9]+", "_", label.split("(")[0].lower()).strip("_")[:40]


def name_api_parameters(demo: gr.Blocks) -> None:
    """Every endpoint's parameters are named after their widgets' labels, so an API client (and the
    README's endpoint list) reads `text`, `seed`, `classifier_free_guidance_scale`, not param_7."""
    for fn in demo.fns.values():
        names: list[str] = []
        given = list(fn.input_parameter_names or [])
        # Gradio makes a parameter optional for clients only under the function's own name.
        optional = {name for name, has_default, default, _ in gr_utils.get_function_params(fn.fn)
                    if has_default and default is None} if fn.fn else set()
        for index, component in enumerate(fn.inputs):
            own = given[index] if index < len(given) else None
            name = own if own in optional else _slug(getattr(component, "label", None) or "") or own
            name = name or f"value_{index}"
            while name in names:
                name += "_"
            names.append(name)
        fn.input_parameter_names = names


def _returned(entry: dict) -> str:
    label = (entry.get("label") or "").split("(")[0].strip()
    return label if label and not re.fullmatch(r"value_\d+", label) else entry.get("component", "?").lower()


def api_reference(demo: gr.Blocks) -> str:
    """The README's list of the endpoints a client may call (`speech-studio api`), from the app itself."""
    lines = ["| endpoint | parameters (name: widget) | returns |", "| --- | --- | --- |"]
    for endpoint, info in sorted(demo.get_api_info()["named_endpoints"].items()):
        params = ", ".join(f"`{p['parameter_name']}`" for p in info["parameters"]) or "none"
        returns = ", ".join(_returned(r) for r in info["returns"]) or "nothing"
        lines.append(f"| `{endpoint}` | {params} | {returns} |")
    return "\n".join(lines) + "\n"


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, share: bool = False,
           **options) -> None:
    """Serve the studio, by default where the environment says (a Space sets GRADIO_SERVER_NAME and
    GRADIO_SERVER_PORT), else on 127.0.0.1:7860. Only the shipped example audio and Gradio's own cache
    (uploads and the copies of generated files, under opaque names) are readable over HTTP; the data
    folder with votes, run metadata and system-named clips is blocked. Uploads over the configured
    size are refused before they are stored or decoded."""
    config = demo.studio_config
    # A server lives long: the bf16 vocoder builds every length's kernels once, at its first request, so no
    # later request waits for one (a one-shot command skips this: models.vocoder.get_vocoder).
    os.environ.setdefault("STUDIO_VOCODER_WARM_UP", "1")
    host = host or os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = port or int(os.environ.get("GRADIO_SERVER_PORT", 7860))
    demo.launch(server_name=host, server_port=port, share=share, theme=gr.themes.Soft(),
                allowed_paths=[str(resynthesis.EXAMPLE.parent)], blocked_paths=[str(config.data_dir.resolve())],
                max_file_size=int(config.max_upload_mb * 2**20), **options)
