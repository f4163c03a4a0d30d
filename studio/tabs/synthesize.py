"""Synthesize: text to speech with any registered TTS checkpoint, its guidance scale, seed and
sampling settings, optionally continuing a reference voice; offline or streamed."""

from __future__ import annotations

import shutil
from typing import Iterator

import gradio as gr
import numpy as np

from models import audio, pipelines
from models.registry import ASSETS, pick_device
from models.roles import TEST_TIME_TRAINING, VOICE_SEEDS
from studio import voices
from studio.common import gpu, mel_figure, reference_voice, to_gradio_audio, tts_model_menu, user_errors, visitor
from studio.config import StudioConfig

EXAMPLE_TEXTS = [
    "The birch canoe slid on the smooth planks.",
    "A quiet morning on the lake gives the best light for painting the far hills.",
    "Streaming speech starts playing before the whole sentence is generated. It is then joined without clicks.",
]
EXAMPLE_REFERENCE = ASSETS / "audio" / "arctic_a0007.wav"
EXAMPLE_REFERENCE_TEXT = "and you always want to see it in the superlative degree"


def _request(model: str | None, text: str, reference: str | None, reference_text: str | None, seed, randomize: bool,
             sampling: dict) -> dict:
    """The pipelines.tts keyword arguments of one UI request (reference loaded, seed decided)."""
    if not model:
        raise ValueError("No TTS model: publish a trained checkpoint to assets/checkpoints, or type a checkpoint "
                         "folder (see docs/sled.md)")
    declared = pipelines.tts_controls(model)
    if not randomize and seed in (None, ""):
        raise ValueError(f"Seed: type a whole number from 0 to {pipelines.MAX_SEED}, or tick Randomize seed")
    request = {"text": text, "model": model, "seed": None if randomize else pipelines.check_seed(seed),
               **{name: value for name, value in sampling.items() if name in declared}}
    if reference:
        request["ref_wav"] = audio.load_audio(reference, audio.SAMPLE_RATE,
                                              max_seconds=pipelines.MAX_REFERENCE_UPLOAD_SECONDS)
        request["ref_sr"] = audio.SAMPLE_RATE
        request["ref_text"] = (reference_text or "").strip() or None
        if request["ref_text"] is None:
            from evaluation.metrics.asr import transcriber

            request["transcribe"] = transcriber(pick_device(None))
    return request


def _fit_checks(ttt: int):
    """What judges a test-time-trained voice against the unfitted model (ASR, WER, speaker similarity)."""
    if not ttt:
        return None
    from evaluation.scorers import training_scorers

    return training_scorers(pick_device(None))


def _mel(wav: np.ndarray):
    return mel_figure({"output": audio.mel_spectrogram(wav).numpy()},
                      hop_seconds=audio.MelConfig().hop_length / audio.SAMPLE_RATE)


def _settings(values: tuple) -> tuple[dict, int, str | None]:
    """Split the trailing inputs: one value per `sampling_names()`, then optionally (use the fitted
    voice, test-time-training samples, vocoder). -> (sampling settings, ttt samples or 0, vocoder or None)."""
    names = sampling_names()
    sampling, rest = dict(zip(names, values[: len(names)])), values[len(names):]
    use_fitted, samples, vocoder = (list(rest) + [False, 0, None])[:3]
    if not use_fitted:
        return sampling, 0, vocoder or None
    return sampling, int(pipelines.SETTINGS["ttt"].check("test-time training samples", samples)), vocoder or None


@gpu
def synthesize(model: str | None, text: str, reference: str | None = None, reference_text: str | None = None,
               cfg: float = 2.0, seed=None, randomize: bool = False, *values, owner: str = "",
               progress=gr.Progress()):
    """-> (audio, mel figure, settings JSON, the seed used). `values`: one per `sampling_names()`, then
    optionally (use the fitted voice, its test-time-training samples, the vocoder); `owner`: whose fitted voices."""
    sampling, ttt, vocoder = _settings(values)
    request = _request(model, text, reference, reference_text, seed, randomize, sampling)
    wav, info = pipelines.tts(cfg=float(cfg), ttt_samples=ttt, ttt_progress=_fit_progress(progress), owner=owner,
                              scorers=_fit_checks(ttt), vocoder=vocoder, **request)
    return to_gradio_audio(wav, audio.SAMPLE_RATE), _mel(wav), info, info["seed"]


@gpu
def synthesize_stream(model: str | None, text: str, reference: str | None = None, reference_text: str | None = None,
                      cfg: float = 2.0, seed=None, randomize: bool = False, *values,
                      owner: str = "") -> Iterator[tuple]:
    """Yields (audio chunk, None, None, None) as frames are decoded, then the mel, settings and seed."""
    if shutil.which("ffmpeg") is None:  # Gradio encodes streamed audio with it
        raise ValueError("streamed playback needs ffmpeg on the server (apt-get install ffmpeg; packages.txt lists "
                         "it for a Space); the Synthesize button works without it")
    sampling, ttt, vocoder = _settings(values)
    request = _request(model, text, reference, reference_text, seed, randomize, sampling)
    chunks, info = pipelines.tts(cfg=float(cfg), stream=True, ttt_samples=ttt, owner=owner,
                                 scorers=_fit_checks(ttt), vocoder=vocoder, **request)
    pieces = []
    for chunk in chunks:
        if len(chunk):
            pieces.append(chunk)
            yield to_gradio_audio(chunk, audio.SAMPLE_RATE), gr.skip(), gr.skip(), gr.skip()
    wav = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    yield gr.skip(), _mel(wav), info, info["seed"]


def _fit_progress(progress):
    def report(step: int, steps: int) -> None:
        progress(step / steps, desc=f"Fitting to the voice: step {step} / {steps}")
    return report


@gpu
def fit_voice(model: str | None, reference: str | None, reference_text: str | None, samples: int, owner: str = "",
              progress=gr.Progress()) -> tuple[str, bool]:
    """Test-time training on the reference clip, for one visitor (`owner`): -> (status line, use the fitted voice)."""
    if not reference:
        raise ValueError("Fitting to a voice needs a reference clip (and its transcript, or the ASR makes one)")
    request = _request(model, "-", reference, reference_text, 0, False, {})
    ref, ref_text, _ = pipelines.prepare_reference(request["ref_wav"], request["ref_sr"], request["ref_text"],
                                                   request.get("transcribe"))  # the clip synthesis will use
    samples = int(pipelines.SETTINGS["ttt"].check("test-time training samples", samples))
    _, info = pipelines.fit_voice(model, ref, ref_text, samples, progress=_fit_progress(progress), owner=owner,
                                  scorers=_fit_checks(samples))
    if "refused" in info:  # the fit made this clip's voice worse: the box stays off
        return f"Voice {info['voice']}: {info['refused']}.", False
    how = "already fitted" if info["cached"] else f"fitted in {info['wall_seconds']:.1f} s"
    return f"Voice {info['voice']}: {how} on {int(samples)} samples. Synthesis now uses it.", True


def clear_fitted(owner: str = "") -> tuple[str, bool]:
    """Forget this visitor's fitted voices (no one else's)."""
    count = pipelines.clear_fitted_voices(owner)
    return f"Cleared your {count} fitted voice{'s' * (count != 1)}.", False


def sampling_names() -> list[str]:
    """Every sampling setting a local TTS checkpoint declares, in a fixed order (one slider each)."""
    return sorted(pipelines.all_tts_controls())


def declared_controls(model: str | None) -> set[str]:
    """The sampling settings the selected model declares (none for an unknown model)."""
    return set(model_controls(model))


def model_controls(model: str | None) -> dict:
    """The selected model's declared settings by name, with their ranges (none for an unknown model)."""
    try:
        return dict(pipelines.tts_controls(model)) if model else {}
    except ValueError:
        return {}


def capabilities(model: str | None) -> frozenset[str]:
    """What the selected model declares it can do (none for an unknown model)."""
    try:
        return pipelines.tts_capabilities(model) if model else frozenset()
    except ValueError:
        return frozenset()


def fits_voices(model: str | None) -> bool:
    return TEST_TIME_TRAINING in capabilities(model)


def visible_controls(model: str | None):
    """Show the sliders the selected model declares, hide the others; then the voice-seed tools and the
    test-time-training box, when the model has them."""
    declared = model_controls(model)
    updates = [setting_update(declared[name]) if name in declared else gr.update(visible=False)
               for name in sampling_names()]
    return updates + [gr.update(visible=VOICE_SEEDS in capabilities(model)), gr.update(visible=fits_voices(model))]


def random_voice() -> int:
    import random

    return random.randrange(1_000_000)


def save_named_voice(saved: dict | None, library: dict[str, int], name: str, voice_seed) -> tuple[dict, dict]:
    """-> (the visitor's saved voices with this one, the menu showing it)."""
    saved = voices.save(saved, name, voice_seed)
    return saved, gr.update(choices=voices.menu(saved, library), value=voices.clean_name(name))


def pick_saved_voice(saved: dict | None, library: dict[str, int], choice: str | None):
    return voices.pick(saved, library, choice) if choice else gr.skip()


def setting_widget(control, **options) -> gr.components.Component:
    """The widget of a declared setting (models.roles.Control): a checkbox for a 0/1 choice, a number box
    for a whole number over a range too wide to slide (a seed), else a slider; its range, default, label."""
    if (control.minimum, control.maximum, control.step) == (0, 1, 1):
        return gr.Checkbox(value=bool(control.default), label=control.label, **options)
    if control.step == 1 and control.maximum - control.minimum > 10_000:
        return gr.Number(value=control.default, minimum=control.minimum, maximum=control.maximum,
                         label=control.label, **options)
    return gr.Slider(control.minimum, control.maximum, value=control.default, step=control.step, label=control.label,
                     **options)


def setting_update(control) -> dict:
    """A setting's widget shown with the selected model's own range and default: two models may declare a
    setting of one name (a temperature) with different ones."""
    if (control.minimum, control.maximum, control.step) == (0, 1, 1):
        return gr.update(visible=True, value=bool(control.default), label=control.label)
    return gr.update(visible=True, minimum=control.minimum, maximum=control.maximum, value=control.default,
                     label=control.label, **({} if control.step == 1 and control.maximum - control.minimum > 10_000
                                             else {"step": control.step}))


def build(config: StudioConfig) -> None:
    specs = pipelines.all_tts_controls()
    library = voices.read_library(config.voice_library)
    with gr.Tab("Synthesize"):
        saved_here = gr.BrowserState({}, storage_key="speech-studio-saved-voices", secret=config.browser_secret())
        gr.Markdown("Text to speech with a trained TTS checkpoint. A reference clip makes the output continue "
                    "its voice (its transcript is produced by the ASR when left blank). The seed shown "
                    "reproduces the output; CFG 1 turns guidance off.")
        with gr.Row():
            with gr.Column():
                model = tts_model_menu()
                text = gr.Textbox(label="Text", lines=3, value=EXAMPLE_TEXTS[0])
                gr.Examples([[t] for t in EXAMPLE_TEXTS], inputs=[text], label="Example texts")
                reference, reference_text = reference_voice("Reference voice (optional)")
                gr.Examples([[str(EXAMPLE_REFERENCE), EXAMPLE_REFERENCE_TEXT]], inputs=[reference, reference_text],
                            label="Example reference (CMU ARCTIC, slt)")
                cfg = setting_widget(pipelines.SETTINGS["cfg"])
                vocoders = pipelines.vocoder_names()  # a menu only when there is a choice: HiFi-GAN and a trained one
                vocoder = gr.Dropdown(vocoders, value=vocoders[0], label="Vocoder", visible=len(vocoders) > 1)
                with gr.Row():
                    seed = gr.Number(value=0, minimum=0, maximum=pipelines.MAX_SEED, label="Seed")  # no rounding:
                    # a fraction is refused with a message (pipelines.check_seed), not silently changed
                    randomize = gr.Checkbox(value=False, label="Randomize seed")
                declared = model_controls(model.value)
                sliders = [setting_widget(declared.get(name, specs[name]), visible=name in declared)
                           for name in sampling_names()]
                # Columns, not Groups: a Group draws its buttons as thin strips over grey blocks.
                with gr.Column(visible=VOICE_SEEDS in capabilities(model.value)) as voice_tools:
                    with gr.Row(equal_height=True):
                        saved = gr.Dropdown(voices.menu({}, library), value=None, label="Saved voices",
                                            allow_custom_value=True, scale=3)  # checked by voices.pick
                        dice = gr.Button("Random voice", scale=1, min_width=120)
                    with gr.Row(equal_height=True):
                        voice_name = gr.Textbox(label="Name this voice", max_lines=1, scale=3)
                        save = gr.Button("Save voice", scale=1, min_width=120)
                with gr.Column(visible=fits_voices(model.value)) as fit_tools:
                    fit_samples = setting_widget(pipelines.SETTINGS["ttt"])
                    with gr.Row():
                        fit = gr.Button("Fit to this voice (TTT)")
                        clear = gr.Button("Clear fitted voices")
                    use_fitted = gr.Checkbox(False, label="Use the voice fitted to the reference")
                    fit_status = gr.Markdown()
                with gr.Row():
                    run = gr.Button("Synthesize", variant="primary")
                    stream = gr.Button("Stream")
            with gr.Column():
                result = gr.Audio(label="Speech", type="numpy", interactive=False, elem_id="tts-output")
                streamed = gr.Audio(label="Streamed speech", streaming=True, autoplay=True, interactive=False,
                                    elem_id="tts-stream")
                settings = gr.JSON(label="Settings used (seed, RTF, ...)")
        mel = gr.Plot(label="Mel spectrogram")
        inputs = [model, text, reference, reference_text, cfg, seed, randomize, *sliders, use_fitted, fit_samples,
                  vocoder]
        # Gradio passes the request only to a positional parameter, hence first, before the inputs.
        @user_errors
        def speak(request: gr.Request, model, *rest, progress=gr.Progress()):
            config.check_model(model)
            return synthesize(model, *rest, owner=visitor(request), progress=progress)

        @user_errors
        def speak_streamed(request: gr.Request, model, *rest):
            config.check_model(model)
            yield from synthesize_stream(model, *rest, owner=visitor(request))

        # Progress and an error show on the audio only: elsewhere the badge covered the Seed box and the mel.
        run.click(speak, inputs, [result, mel, settings, seed], api_name="synthesize", show_progress_on=[result])
        stream.click(speak_streamed, inputs, [streamed, mel, settings, seed],
                     api_name="synthesize_stream", show_progress_on=[streamed])
        def controls(model):
            try:
                config.check_model(model)
            except ValueError:  # a path outside the allowed folders shows nothing of what is there
                model = None
            return visible_controls(model)

        model.change(controls, [model], [*sliders, voice_tools, fit_tools], api_name="tts_controls")
        if "voice_seed" in sampling_names():
            voice_seed = sliders[sampling_names().index("voice_seed")]
            dice.click(random_voice, None, voice_seed, api_name="random_voice")
            # An API client holds its saved voices itself (the page keeps them in the browser): it passes
            # them in and gets them back.
            @user_errors
            def save_voice(name, voice_seed, your_saved_voices):
                return save_named_voice(your_saved_voices, library, name, voice_seed)

            @user_errors
            def pick_voice(choice, your_saved_voices):
                return pick_saved_voice(your_saved_voices, library, choice)

            save.click(save_voice, [voice_name, voice_seed, saved_here], [saved_here, saved], api_name="save_voice")
            saved.change(pick_voice, [saved, saved_here], voice_seed, api_name="pick_voice")
            def saved_menu(saved_voices):
                return gr.update(choices=voices.menu(saved_voices, library))

            # On page load (the browser's saved voices) and after each save:
            gr.on(None, saved_menu, [saved_here], [saved], api_visibility="private")

        @user_errors
        def fit_to_voice(model, reference, reference_text, samples, request: gr.Request, progress=gr.Progress()):
            config.check_model(model)
            return fit_voice(model, reference, reference_text, samples, owner=visitor(request), progress=progress)

        fit.click(fit_to_voice, [model, reference, reference_text, fit_samples], [fit_status, use_fitted],
                  api_name="fit_voice")
        def clear_mine(request: gr.Request):
            return clear_fitted(visitor(request))

        clear.click(clear_mine, None, [fit_status, use_fitted], api_name="clear_fitted_voices")
