"""Builds the Gradio studio from its tabs and launches it."""

from __future__ import annotations

import gradio as gr

from studio.common import SERVED_MAX_AGE_S
from studio.config import StudioConfig
from studio.tabs import cfg_lab, evaluate, latents, listen, resynthesis, synthesize

TITLE = "Speech Studio"
INTRO = (
    "# Speech Studio\n"
    "Hear, compare and measure speech generators side by side. Models run on the GPU when "
    "there is one, on the CPU otherwise."
)
QUEUE_CONCURRENCY = 2  # two workers: one generation per CPU core


def build_app(config: StudioConfig | None = None) -> gr.Blocks:
    config = config or StudioConfig()
    with gr.Blocks(title=TITLE, delete_cache=(3600, SERVED_MAX_AGE_S)) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            synthesize.build(config)
            listen.build(config)
            cfg_lab.build(config)
            evaluate.build(config)
            latents.build(config)
            resynthesis.build()
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY)
    demo.studio_config = config
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False, **options) -> None:
    """Serve the studio. Only the shipped example audio and Gradio's own cache (uploads and the
    copies of generated files, under opaque names) are readable over HTTP; the data folder with
    votes, run metadata and system-named clips is blocked. Uploads over the configured size are
    refused before they are stored or decoded."""
    config = demo.studio_config
    demo.launch(server_name=host, server_port=port, share=share, theme=gr.themes.Soft(),
                allowed_paths=[str(resynthesis.EXAMPLE.parent)], blocked_paths=[str(config.data_dir.resolve())],
                max_file_size=int(config.max_upload_mb * 2**20), **options)
