"""Helpers every tab shares: error display, GPU scheduling on Spaces, audio and plots."""

from __future__ import annotations

import functools
import html
import inspect
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

try:  # On a ZeroGPU Space, spaces.GPU attaches a GPU for the duration of a call.
    import spaces

    gpu: Callable = spaces.GPU
except ImportError:

    def gpu(fn: Callable) -> Callable:
        return fn


def user_errors(fn: Callable) -> Callable:
    """Turn a handler's ValueError / FileNotFoundError into `gr.Error`: the page shows the reason,
    a `gradio_client` caller gets it as an exception, and every output keeps its value (Gradio
    updates no output of an event that raised). The reason is HTML-escaped: the toast renders HTML,
    and a message quoting a visitor's `<speak>` or `<a href=…>` must show it, not render it. Bugs keep
    their traceback."""
    def shown(error: Exception) -> gr.Error:
        return gr.Error(visitor_message(error), print_exception=False)

    if inspect.isgeneratorfunction(fn):  # streaming handlers: errors arrive while iterating
        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except (ValueError, FileNotFoundError) as error:
                raise shown(error) from None

        return streaming

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError) as error:
            raise shown(error) from None

    return wrapper


def visitor_message(error: Exception) -> str:
    """An error as a visitor sees it: a file error names the file, not its server folder; HTML-escaped."""
    if isinstance(error, OSError) and error.filename:
        text = f"{Path(error.filename).name}: {error.strerror or 'cannot be read'}"
    else:
        text = str(error)
    return html.escape(text, quote=False)


def visitor(request: gr.Request | None) -> str:
    """Whose state a request touches: the visitor's session (a page load, or one gradio_client); "" when a
    handler is called directly, outside a served app."""
    return getattr(request, "session_hash", None) or ""


def visitor_address(request: gr.Request | None) -> str:
    """The visitor's network address: on a Hugging Face Space (SPACE_ID set) every request comes through its
    proxy, so the first X-Forwarded-For hop, which the proxy sets; elsewhere the connection's own address
    (a header a client could forge is not trusted)."""
    if request is None:
        return ""
    forwarded = (request.headers.get("x-forwarded-for") or "").split(",")[0].strip()
    if os.environ.get("SPACE_ID") and forwarded:
        return forwarded
    return getattr(getattr(request, "client", None), "host", None) or ""


SERVED_MAX_AGE_S = 24 * 3600  # served copies (and Gradio's cached ones, see studio.app) older than this go


def served_copy(path: str | Path, name: str | None = None) -> str:
    """A copy of a file the studio made, under an opaque name in a private temp folder, for a
    component to serve; `name` gives a download its readable name instead (in a folder of its own).
    The studio's data folder is never served itself (votes, metadata and system-named clips stay
    private), so every file shown to a visitor goes through here."""
    source = Path(path)
    folder = _served_folder()
    for old in folder.iterdir():  # Gradio has long since copied these into its own cache
        try:
            if time.time() - old.stat().st_mtime > SERVED_MAX_AGE_S:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        except FileNotFoundError:  # another worker removed it first
            pass
    if name:
        own = folder / uuid.uuid4().hex
        own.mkdir()
        target = own / name
    else:
        target = folder / f"{uuid.uuid4().hex}{source.suffix.lower()}"
    shutil.copyfile(source, target)
    return str(target)


def served_audio(wav: np.ndarray, sr: int) -> str:
    """Audio the studio made, written under an opaque name in the served folder (as served_copy)."""
    from models import audio

    return str(audio.save_audio(_served_folder() / f"{uuid.uuid4().hex}.wav", wav, sr))


@functools.lru_cache(maxsize=1)
def _served_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="speech-studio-served-"))


def tts_model_menu() -> gr.Dropdown:
    """The TTS checkpoints found locally; any checkpoint folder may be typed in."""
    from models import pipelines

    models = pipelines.available_tts_models()
    return gr.Dropdown(models, value=models[0] if models else None, allow_custom_value=True,
                       label="Model (a checkpoint name, or a checkpoint folder)")


def reference_voice(title: str) -> tuple[gr.Audio, gr.Textbox]:
    """A folded reference clip (upload or microphone) and its transcript box."""
    with gr.Accordion(title, open=False):
        reference = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Reference clip")
        reference_text = gr.Textbox(label="Its transcript (blank: transcribed by the ASR)")
    return reference, reference_text


def to_gradio_audio(wav: np.ndarray, sr: int) -> tuple[int, np.ndarray]:
    """float audio -> (rate, int16), the form gr.Audio plays without a conversion warning."""
    return sr, (np.clip(wav, -1.0, 1.0) * 32767).astype(np.int16)


def mel_figure(mels: dict[str, np.ndarray], hop_seconds: float) -> go.Figure:
    """Stacked heatmaps of log-mel spectrograms (n_mels, frames), one row per entry."""
    fig = make_subplots(rows=len(mels), cols=1, subplot_titles=list(mels), vertical_spacing=0.2)
    for row, mel in enumerate(mels.values(), start=1):
        fig.add_trace(
            go.Heatmap(z=mel, x=np.arange(mel.shape[1]) * hop_seconds, colorscale="Magma",
                       showscale=row == 1, colorbar={"title": "log mel"}),
            row=row, col=1,
        )
        fig.update_xaxes(title_text="seconds", row=row, col=1)
        fig.update_yaxes(title_text="mel band", row=row, col=1)
    fig.update_layout(height=260 * len(mels), margin={"l": 50, "r": 20, "t": 40, "b": 40})
    return fig


class RunFollower:
    """Runs an evaluation (evaluation.runner) in a worker thread. `steps` yields a status line
    about once a second while it works, moving `progress`; afterwards `summary` holds the
    runner's summary. The runner's errors are raised from `steps`. When the generator is closed
    before the end (Gradio cancels the event when the page closes), the run stops at its next unit."""

    POLL_SECONDS = 1.0

    def __init__(self, run, progress: Callable):
        from evaluation.runner import planned_units

        self.run, self.progress, self.total, self.summary = run, progress, planned_units(run), None

    @property
    def steps(self) -> Iterator[str]:
        from evaluation.results import latest_rows, read_results
        from evaluation.runner import run_eval

        outcome: dict = {}
        stop = threading.Event()

        def work():
            try:
                outcome["summary"] = run_eval(self.run, argv=["studio", Path(self.run.out).name], stop=stop)
            except Exception as error:  # re-raised below, in the handler's thread
                outcome["error"] = error

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(self.POLL_SECONDS)
                done = len(latest_rows(read_results(self.run.out)))
                self.progress(min(done / max(self.total, 1), 1.0), desc=f"{done} / {self.total} results")
                yield f"Running: {done} of {self.total} results"
        finally:
            stop.set()  # closed early (GeneratorExit): nobody is waiting for the rest
        if "error" in outcome:
            if isinstance(outcome["error"], (ValueError, FileNotFoundError)):
                raise outcome["error"]
            raise gr.Error(f"evaluation failed: {visitor_message(outcome['error'])}")
        self.summary = outcome["summary"]
