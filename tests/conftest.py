from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ARCTIC = REPO / "assets" / "audio" / "arctic_a0007.wav"


@pytest.fixture(scope="session")
def arctic_path() -> Path:
    return ARCTIC


@pytest.fixture(scope="session")
def arctic_wav() -> np.ndarray:
    from models.audio import load_audio

    return load_audio(ARCTIC)


@pytest.fixture(scope="session")
def vocoder():
    from models.vocoder import get_vocoder

    return get_vocoder("cpu")


@pytest.fixture(scope="session")
def mini(tmp_path_factory):
    """The mini corpus (all installed voices), built once per test session: (dir, report, log)."""
    from models.data import corpus

    out = tmp_path_factory.mktemp("corpus") / "mini"
    logged = []
    report = corpus.build(out, profile="mini", workers=2, seed=0, log=logged.append)
    return out, report, logged


def tone(seconds: float = 1.0, sr: int = 22050, freq: float = 220.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
