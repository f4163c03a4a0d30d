"""Resynthesis: hear what the shared vocoder, each codec and the classical baselines keep of a recording;
a token codec at the bitrate (window) chosen."""

from __future__ import annotations

import gradio as gr

from evaluation.metrics import MetricError, pesq_score, stoi_score
from models import audio, pipelines, registry
from models.registry import ASSETS
from studio.common import gpu, mel_figure, to_gradio_audio, user_errors

EXAMPLE = ASSETS / "audio" / "arctic_a0007.wav"


def window_menu(codec: str | None) -> dict:
    """The bitrate choices of a token codec (one per trained window), hidden for every other codec."""
    windows = pipelines.codec_windows(codec) if codec else ()
    if not windows:
        return gr.update(choices=[], value=None, visible=False)
    choices = [(f"w = {w}: {pipelines.codec_bitrate(codec, w):.0f} bit/s", w) for w in windows]
    return gr.update(choices=choices, value=registry.checkpoint_config(codec).get("window", windows[0]),
                     visible=True)


@gpu
def resynthesize(audio_path: str | None, codec: str = "vocoder", window: int | None = None):
    """Uploaded or recorded file -> (resynthesis, mel figure, metrics dict)."""
    if not audio_path:
        raise ValueError("No audio: upload a file or record from the microphone first")
    wav = audio.load_audio(audio_path, audio.SAMPLE_RATE)
    window = int(window) if window else None  # a window for a codec without windows is refused, not dropped
    out, info = pipelines.reconstruct(wav, audio.SAMPLE_RATE, codec=codec, window=window)
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
        gr.Markdown("Analysis-resynthesis: the input through a codec and back. `vocoder` is the 80-band mel "
                    "through the universal HiFi-GAN (the ceiling of every mel-based codec), and a vocoder "
                    "checkpoint (Vocos) is the same round trip through it; `codec2_700c`, "
                    "`codec2_1200` and `opus_6k` are classical codecs at their bitrates; a token codec "
                    "(ALMTokenizer) offers a bitrate per window. PESQ-wb and STOI compare the result with the "
                    "input at 16 kHz.")
        with gr.Row():
            with gr.Column():
                source = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Input audio")
                codec = gr.Dropdown(pipelines.available_codecs(), value="vocoder", label="Codec")
                # Every token codec's windows from the start: an API call needs no codec.change first
                # (resynthesize checks the window against the codec).
                windows = sorted({w for name in pipelines.available_token_codecs()
                                  for w in pipelines.codec_windows(name)})
                window = gr.Dropdown(windows, value=None, visible=False, label="Bitrate (window)")
                run = gr.Button("Resynthesize", variant="primary")
                gr.Examples([[str(EXAMPLE)]], inputs=[source], label="Example (CMU ARCTIC, slt)")
            with gr.Column():
                result = gr.Audio(label="Resynthesis", type="numpy", interactive=False)
                scores = gr.JSON(label="Metrics and settings")
        mels = gr.Plot(label="Mel spectrograms")
        codec.change(window_menu, [codec], [window], api_name="resynthesis_windows")
        run.click(user_errors(resynthesize), [source, codec, window], [result, mels, scores],
                  api_name="resynthesize")
