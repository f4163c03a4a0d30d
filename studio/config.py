"""What a studio instance serves: its test sets, the systems of its listening test, and where
it keeps votes, clips and evaluation runs. Data, not code paths: `serve` flags fill it."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from models.registry import ASSETS, REPO_ROOT


def default_testsets() -> dict[str, str]:
    from evaluation.systems import builtin_testsets

    return {name: str(path) for name, path in builtin_testsets().items()}


def default_systems() -> list[str]:
    """Ground truth, the vocoder ceiling, the installed classical codecs, every vocoder checkpoint's round trip,
    every local latent codec, TTS and
    speech-to-speech checkpoint, the built-in speech-to-speech baselines, and every local token codec at each
    bitrate it serves."""
    from models import classical_codecs, pipelines, registry
    from models.roles import SPEECH_TO_SPEECH

    classical = [name for name, codec in classical_codecs.CODECS.items() if codec.available() is None]
    tokens = [f"{name}_w{w}={name}:window={w}" for name in pipelines.available_token_codecs()
              for w in pipelines.codec_windows(name)]
    return ["gt", "vocoder", *classical] + [f"{name}={name}" for name in pipelines.available_vocoders()] + \
        [f"{name}={name}" for name in pipelines.available_latent_codecs()] + \
        tokens + [f"{name}={name}" for name in pipelines.available_tts_models()] + \
        [f"{name}={name}" for name in registry.checkpoints_with_role(SPEECH_TO_SPEECH)] + \
        [f"{name}={name}" for name in pipelines.SPEECH_BASELINES]


@dataclass
class StudioConfig:
    # Votes (SQLite), A/B clips and evaluation runs; on a Space, point it at persistent storage (/data).
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("STUDIO_DATA", REPO_ROOT / "runs" / "studio")))
    testsets: dict[str, str] = field(default_factory=default_testsets)  # name -> .lst / .jsonl manifest
    # `speech-studio eval --system` specs: the A/B test's systems and the Evaluate tab's menu.
    systems: list[str] = field(default_factory=default_systems)
    eval_max_items: int = 50  # the Evaluate tab refuses larger runs (the CLI has no limit)
    # The A/B test's rules, checked on the server: a vote counts once both clips were played and this share of
    # their total length has passed since the first play; one vote per visitor every arena_vote_gap_s, and at
    # most arena_votes_per_hour from one network address (TTS Arena limits per visitor and per address too).
    arena_min_listen: float = 0.5
    arena_vote_gap_s: float = 3.0
    arena_votes_per_hour: int = 120
    # Uploads above this are refused by the server before anything decodes them.
    max_upload_mb: float = 50.0
    # Folders beyond assets/ where a visitor may name a checkpoint folder (the model boxes).
    model_roots: list[str] = field(default_factory=list)
    # A shared, read-only library of named voice seeds (JSON name -> seed) offered to every visitor beside the
    # voices each saves in their own browser; none unless the operator gives one.
    voice_library: Path | None = field(default_factory=lambda: os.environ.get("STUDIO_VOICE_LIBRARY") or None)

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)

    def browser_secret(self) -> str:
        """The key Gradio's BrowserState encrypts the visitors' saved voices with (a page can read them; the
        key only keeps one studio's values from another's), made once per data folder so that a restart
        still reads them: on a Space, keep the data folder on persistent storage."""
        import secrets

        from models.files import write_text_atomic

        path = self.data_dir / "browser_secret"
        if not path.is_file():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def readable_roots(self) -> list[Path]:
        """The allow-list of folders a visitor's manifest, system folder or checkpoint path may name: the
        shipped assets, the folders of the configured test sets and the operator's model folders. Never the
        data folder (votes, the A/B clip cache named by system, other visitors' runs), even inside one."""
        return [ASSETS.resolve(), *(Path(root).resolve() for root in self.model_roots),
                *(testset_root(manifest) for manifest in self.testsets.values())]

    def check_model(self, model: str | None) -> None:
        """A model box's value must be a checkpoint name or a folder under `readable_roots`."""
        from models import registry

        if model and model not in registry.list_checkpoints():
            self.check_readable(model, "model folder")

    def check_readable(self, path: str | os.PathLike, what: str) -> Path:
        """`path` resolved, if it lies under `readable_roots` and outside the data folder; otherwise one
        line that is the same whether or not the path exists (a visitor must not learn what is there)."""
        resolved = Path(os.path.realpath(os.path.join(self.data_dir, path)))
        private = resolved.is_relative_to(self.data_dir.resolve())
        if private or not any(resolved.is_relative_to(root) for root in self.readable_roots()):
            raise ValueError(f"{what} {Path(path).name!r} is outside the folders this studio reads (its test "
                             "sets and shipped assets): upload the audio, or ask the operator to add a test set")
        return resolved


@functools.lru_cache(maxsize=64)
def testset_root(manifest: str) -> Path:
    """The folder holding a test set: the deepest one that contains its manifest and every audio
    file it names (a corpus's eval/*.lst names audio under the corpus's wavs/)."""
    from evaluation.systems import AUDIO_FIELDS, read_items

    folder = Path(manifest).resolve().parent
    paths = [str(folder)]
    try:
        items = read_items(manifest)
    except (OSError, ValueError):  # an unbuilt or broken test set allows nothing beyond its folder
        items = []
    paths += [str(Path(getattr(item, f)).parent) for item in items for f in AUDIO_FIELDS if getattr(item, f)]
    return Path(os.path.commonpath(paths))
