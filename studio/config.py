"""What a studio instance serves: its test sets, the systems of its listening test, and where
it keeps votes, clips and evaluation runs. Data, not code paths: `serve` flags fill it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from models.registry import REPO_ROOT


def default_testsets() -> dict[str, str]:
    from evaluation.systems import builtin_testsets

    return {name: str(path) for name, path in builtin_testsets().items()}


def default_systems() -> list[str]:
    """Ground truth, the vocoder ceiling, and every local codec and TTS checkpoint."""
    from models import pipelines

    return ["gt", "vocoder"] + [f"{name}={name}" for name in pipelines.available_codecs()[1:]
                                + pipelines.available_tts_models()]


@dataclass
class StudioConfig:
    # Votes (SQLite), A/B clips and evaluation runs; on a Space, point it at persistent storage (/data).
    data_dir: Path = field(default_factory=lambda: Path(os.environ.get("STUDIO_DATA", REPO_ROOT / "runs" / "studio")))
    testsets: dict[str, str] = field(default_factory=default_testsets)  # name -> .lst / .jsonl manifest
    # `speech-studio eval --system` specs: the A/B test's systems and the Evaluate tab's menu.
    systems: list[str] = field(default_factory=default_systems)
    eval_max_items: int = 50  # the Evaluate tab refuses larger runs (the CLI has no limit)

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)
