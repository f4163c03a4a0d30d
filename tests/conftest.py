import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ARCTIC = REPO / "assets" / "audio" / "arctic_a0007.wav"
# Building every bf16 kernel length at load costs ~20 s on a CPU; tests build the lengths they use.
os.environ.setdefault("STUDIO_VOCODER_WARM_UP", "0")
os.environ.pop("STUDIO_VOCODER", None)  # the vocoder tests measure HiFi-GAN, whatever the shell chose


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


@pytest.fixture(scope="session")
def sled_run(mini, tmp_path_factory):
    """A tiny Flow-VAE and a tiny SLED trained 4 steps on it through the CLI: the exported SLED folder."""
    import yaml

    from models.training import load_config
    from studio.cli import main

    root = tmp_path_factory.mktemp("sled")
    vae = root / "vae"
    assert main(["train", "flow_vae", "--config", str(REPO / "models/configs/flow_vae_tiny.yaml"),
                 "--data", str(mini[0]), "--out", str(vae), "--steps", "2"]) == 0
    tiny = load_config(REPO / "models" / "configs" / "sled_tiny.yaml")
    config = {**tiny, "model": {**tiny["model"], "codec": str(vae / "export")}}
    path = root / "sled_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "sled", "--config", str(path), "--data", str(mini[0]), "--out", str(root / "sled")]) == 0
    return root / "sled" / "export"


@pytest.fixture(scope="session")
def speaker_encoder_run(mini, tmp_path_factory):
    """A tiny speaker encoder trained 4 steps on the mini corpus through the CLI: its export folder."""
    from studio.cli import main

    out = tmp_path_factory.mktemp("speaker_encoder") / "run"
    assert main(["train", "speaker_encoder", "--config", str(REPO / "models/configs/speaker_encoder_tiny.yaml"),
                 "--data", str(mini[0]), "--out", str(out)]) == 0
    return out / "export"


@pytest.fixture(scope="session")
def kalle_run(mini, sled_run, speaker_encoder_run, tmp_path_factory):
    """A tiny KALL-E trained 4 steps through the CLI on sled_run's tiny codec: its export folder."""
    import yaml

    from models.training import load_config
    from studio.cli import main

    root = tmp_path_factory.mktemp("kalle")
    tiny = load_config(REPO / "models" / "configs" / "kalle_tiny.yaml")
    config = {**tiny, "model": {**tiny["model"], "codec": str(sled_run.parents[1] / "vae" / "export"),
                                "speaker_encoder": str(speaker_encoder_run)}}
    path = root / "kalle_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "kalle", "--config", str(path), "--data", str(mini[0]), "--out", str(root / "kalle")]) == 0
    return root / "kalle" / "export"


def tone(seconds: float = 1.0, sr: int = 22050, freq: float = 220.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="session", autouse=True)
def studio_data(tmp_path_factory):
    """Studio votes, clips and runs go to a temp folder, never the checkout's runs/studio."""
    import os

    folder = tmp_path_factory.mktemp("studio_data")
    previous = os.environ.get("STUDIO_DATA")
    os.environ["STUDIO_DATA"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("STUDIO_DATA", None)
    else:
        os.environ["STUDIO_DATA"] = previous


@pytest.fixture
def fits_pass_the_check(monkeypatch):
    """Test-time-training plumbing tests (caching, owners, learning rates) on the tiny model, whose check
    sentences are noise: every fit passes the check (lengths unbounded, no ASR or speaker judges), so the
    outcome does not hang on how the tiny model happened to train. The check itself is tested with judges."""
    from evaluation import scorers
    from models.pipelines import fitted_voices
    from models.roles import Scorers

    monkeypatch.setattr(fitted_voices, "TTT_CHECK_RATIO", (0.0, float("inf")))
    monkeypatch.setattr(scorers, "training_scorers", lambda device="cpu": Scorers())


# built from the apt-installed corpus voices
VOICE_FIXTURES = {"mini", "sled_run", "speaker_encoder_run", "kalle_run", "studio_url", "page"}


def pytest_collection_modifyitems(items):
    """Tests that need the corpus voices (flite, festival, espeak-ng, Piper) are marked `voices`."""
    for item in items:
        if VOICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.voices)


@pytest.fixture(scope="session")
def acoustic_decoder_run(tmp_path_factory):
    """An untrained tiny Metis S2A over the shipped ALMTokenizer and semantic tokenizer, saved as a checkpoint:
    the acoustic decoder a tiny Metis T2S speaks through."""
    import torch

    from models import registry
    from models.training import get_task, load_config

    config = load_config(REPO / "models" / "configs" / "metis_s2a_tiny.yaml")
    recipe = get_task("metis_s2a", config["model"])
    recipe.fit_to_stages()
    torch.manual_seed(0)
    card = {"data": "none (untrained)", "steps": 0, "wall_time_s": 0.0, "device": "cpu", "metrics": {}}
    return registry.save_checkpoint(recipe.build(), {**recipe.model_config, "model": "metis_s2a"}, card,
                                    tmp_path_factory.mktemp("s2a") / "export")
