"""Resynthesis: hear what the shared vocoder (and later each codec) keeps of a recording."""

from __future__ import annotations

import gradio as gr

from evaluation.metrics import MetricError, pesq_score, stoi_score
from models import audio, pipelines
from models.registry import ASSETS
from studio.common import gpu, mel_figure, to_gradio_audio, user_errors

EXAMPLE = ASSETS / "audio" / "arctic_a0007.wav"


@gpu
def resynthesize(audio_path: str | None, codec: str = "vocoder"):
    """Uploaded or recorded file -> (resynthesis, mel figure, metrics dict)."""
    if not audio_path:
        raise ValueError("No audio: upload a file or record from the microphone first")
    wav = audio.load_audio(audio_path, audio.SAMPLE_RATE)
    out, info = pipelines.reconstruct(wav, audio.SAMPLE_RATE, codec=codec)
    scores = {}
    for name, metric in (("pesq_wb", pesq_score), ("stoi", stoi_score)):
        try:
            scores[name] = round(metric(wav, out, audio.SAMPLE_RATE), 3)
        except MetricError as error:
            scores[name] = f"n/a ({error})"
    figure = mel_figure(
        {"input": audio.mel_spectrogram(wav).numpy(), f"{codec} resynthesis": audio.mel_spectrogram(out).numpy()},
        hop_seconds=audio.MelConfig().hop_length / audio.SAMPLE_RATE,
    )
    return to_gradio_audio(out, audio.SAMPLE_RATE), figure, {**scores, **info}


def build() -> None:
    with gr.Tab("Resynthesis"):
        gr.Markdown("Analysis-resynthesis: the input's 80-band mel through the universal HiFi-GAN "
                    "vocoder. PESQ-wb and STOI compare the result with the input at 16 kHz.")
        with gr.Row():
            with gr.Column():
                source = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Input audio")
                codec = gr.Dropdown(pipelines.available_codecs(), value="vocoder", label="Codec")
                run = gr.Button("Resynthesize", variant="primary")
                gr.Examples([[str(EXAMPLE)]], inputs=[source], label="Example (CMU ARCTIC, slt)")
            with gr.Column():
                result = gr.Audio(label="Resynthesis", type="numpy", interactive=False)
                scores = gr.JSON(label="Metrics and settings")
        mels = gr.Plot(label="Mel spectrograms")
        run.click(user_errors(resynthesize), [source, codec], [result, mels, scores],
                  api_name="resynthesize")
