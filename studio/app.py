"""Builds the Gradio studio from its tabs and launches it."""

from __future__ import annotations

import gradio as gr

from studio.tabs import resynthesis, synthesize

TITLE = "Speech Studio"
INTRO = (
    "# Speech Studio\n"
    "Hear, compare and measure speech generators side by side. Models run on the GPU when "
    "there is one, on the CPU otherwise."
)
QUEUE_CONCURRENCY = 2  # two workers: one generation per CPU core


def build_app() -> gr.Blocks:
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            synthesize.build()
            resynthesis.build()
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    demo.launch(server_name=host, server_port=port, share=share, theme=gr.themes.Soft(),
                allowed_paths=[str(resynthesis.EXAMPLE.parent)])
