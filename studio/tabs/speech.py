"""Voice conversion, Enhancement and Speaker extraction: one tab builder for the three speech-to-speech tasks.
Each tab takes a recording (upload or microphone) and, for conversion and extraction, a clip of the voice; any
backend that serves the task (trained checkpoints first, then the built-in baselines), its declared settings,
a seed; it returns the output, the two mel spectrograms and the settings with the real-time factor."""

from __future__ import annotations

import time

import gradio as gr

from models import audio, pipelines
from models.registry import ASSETS
from studio.common import gpu, mel_figure, to_gradio_audio, user_errors
from studio.tabs.synthesize import setting_update, setting_widget

TABS = {  # task -> (tab title, what the input is, what the voice clip is, or None)
    "convert": ("Voice conversion", "Source speech (what is said)", "Target voice (a clip of the voice to speak in)"),
    "enhance": ("Enhancement", "Noisy recording", None),
    "extract": ("Speaker extraction", "Mixture (the speaker to keep, and others)",
                "Enrollment (another clip of the speaker to keep)"),
}
EXAMPLES = {  # assets/audio/README.md: CMU ARCTIC slt, it in brown noise at 5 dB SNR and under a recorded
    # telephone voice, that voice, and another slt clip
    "convert": [[str(ASSETS / "audio" / "arctic_a0007.wav"),
                 str(ASSETS / "audio" / "real" / "pyannote_sample_07_sheila.flac")]],
    "enhance": [[str(ASSETS / "audio" / "arctic_a0007_noisy.flac")]],
    "extract": [[str(ASSETS / "audio" / "arctic_a0007_sheila_mixture.flac"),
                 str(ASSETS / "audio" / "real" / "arctic_slt_a0009.flac")]],
}


def task_controls(task: str) -> dict:
    """Every setting a model serving the task declares, by name (one widget each; the first declaration's range)."""
    controls: dict = {}
    for model in pipelines.available_speech_models(task):
        for name, control in pipelines.speech_controls(model).items():
            controls.setdefault(name, control)
    return controls


def visible_controls(names: list[str], model: str | None) -> list[dict]:
    """Show the widgets (of settings `names`) the selected model declares, with its ranges; hide the others."""
    declared = pipelines.speech_controls(model) if model else {}
    return [setting_update(declared[name]) if name in declared else gr.update(visible=False) for name in names]


@gpu
def transform(task: str, names: list[str], model: str | None, source: str | None, voice: str | None = None,
              seed=None, randomize: bool = False, *values):
    """The tab's action; `values` are its setting widgets', named `names` -> (the output audio, the mel figure
    of input and output, the settings used with the RTF)."""
    title, source_label, voice_label = TABS[task]
    if not model:
        raise ValueError(f"No {title.lower()} model is installed")
    if not source:
        raise ValueError(f"No audio: upload or record the {source_label.split(' (')[0].lower()} first")
    if voice_label and not voice:
        raise ValueError(f"No voice clip: upload or record the {voice_label.split(' (')[0].lower()} first")
    if not randomize and seed in (None, ""):
        raise ValueError(f"Seed: type a whole number from 0 to {pipelines.MAX_SEED}, or tick Randomize seed")
    declared = pipelines.speech_controls(model)
    settings = {name: value for name, value in zip(names, values) if name in declared}
    wav = audio.load_audio(source, audio.SAMPLE_RATE)
    clip = (audio.load_audio(voice, audio.SAMPLE_RATE), audio.SAMPLE_RATE) if voice_label else ()
    start = time.perf_counter()
    out, info = getattr(pipelines, task)(wav, audio.SAMPLE_RATE, *clip, model=model,
                                         seed=None if randomize else pipelines.check_seed(seed), **settings)
    info["rtf"] = round((time.perf_counter() - start) / max(len(out) / audio.SAMPLE_RATE, 1e-6), 3)
    figure = mel_figure({"input": audio.mel_spectrogram(wav).numpy(), "output": audio.mel_spectrogram(out).numpy()},
                        hop_seconds=audio.MelConfig().hop_length / audio.SAMPLE_RATE)
    return to_gradio_audio(out, audio.SAMPLE_RATE), figure, info


def build(task: str) -> None:
    title, source_label, voice_label = TABS[task]
    models = pipelines.available_speech_models(task)
    controls = task_controls(task)
    declared = pipelines.speech_controls(models[0]) if models else {}
    with gr.Tab(title):
        gr.Markdown(f"{title}: trained backends first, then the built-in training-free baselines "
                    "(models/speech_baselines.py)." if models else
                    f"{title}: no backend is installed yet (Metis's fine-tune is to come).")
        with gr.Row():
            with gr.Column():
                source = gr.Audio(sources=["upload", "microphone"], type="filepath", label=source_label,
                                  elem_id=f"{task}-source")
                voice = gr.Audio(sources=["upload", "microphone"], type="filepath", label=voice_label or "Voice clip",
                                 visible=voice_label is not None, elem_id=f"{task}-voice")
                model = gr.Dropdown(models, value=models[0] if models else None, label="Model")
                widgets = [setting_widget(declared.get(name, control), visible=name in declared)
                           for name, control in controls.items()]
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=pipelines.MAX_SEED, label="Seed")
                    randomize = gr.Checkbox(value=False, label="Randomize seed")
                run = gr.Button(title, variant="primary")
                if task in EXAMPLES:
                    gr.Examples(EXAMPLES[task], inputs=[source, voice][: len(EXAMPLES[task][0])], label="Example")
            with gr.Column():
                result = gr.Audio(label="Output", type="numpy", interactive=False, elem_id=f"{task}-output")
                info = gr.JSON(label="Settings used")
        mels = gr.Plot(label="Mel spectrograms, input and output")
        names = list(controls)  # the widgets, as built: a checkpoint published later does not shift them
        if widgets:
            model.change(lambda name: visible_controls(names, name), [model], widgets, api_name=f"{task}_controls")
        run.click(user_errors(lambda *args: transform(task, names, *args)),
                  [model, source, voice, seed, randomize, *widgets], [result, mels, info], api_name=task)
