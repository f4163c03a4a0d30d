import numpy as np
import pytest
import torch

from evaluation.metrics.signal import si_sdr as si_sdr_metric
from models import audio, pipelines, registry
from models.roles import SPEECH_TO_SPEECH
from models.speaker_beam import SpeakerBeam, SpeakerBeamConfig
from models.training.speaker_beam import CEILING_DB, mix, si_sdr
from tests.conftest import REPO, tone

TINY = SpeakerBeamConfig(bottleneck=16, hidden=32, blocks=2, repeats=2)


def test_mixtures_hit_the_drawn_sir_and_stay_below_full_scale():
    generator = torch.Generator().manual_seed(0)
    target, interferer = torch.randn(3, 4000, generator=generator), 5 * torch.randn(3, 4000, generator=generator)
    valid = torch.ones(3, 4000)
    valid[2, 3000:] = 0  # a shorter utterance: its ratio over its real samples only
    sir = torch.tensor([-5.0, 0.0, 5.0])
    mixture, scaled = mix(target * valid, interferer, valid, sir)
    rest = (mixture - scaled) * valid
    ratio = 10 * torch.log10((scaled * valid).square().sum(-1) / rest.square().sum(-1))
    assert torch.allclose(ratio, sir, atol=1e-3)
    assert mixture.abs().max() <= 0.99 + 1e-6


def test_the_training_si_sdr_is_the_metrics_below_its_ceiling():
    rng = np.random.default_rng(0)
    target = rng.standard_normal(16000).astype(np.float32)
    noisy = target + 0.3 * rng.standard_normal(16000).astype(np.float32)
    ours = si_sdr(torch.from_numpy(noisy)[None], torch.from_numpy(target)[None], torch.ones(1, 16000)).item()
    assert abs(ours - si_sdr_metric(target, noisy, 16000)) < 0.1
    copy = si_sdr(torch.from_numpy(2 * target)[None], torch.from_numpy(target)[None], torch.ones(1, 16000)).item()
    assert abs(copy - CEILING_DB) < 0.01  # a perfect (rescaled) output: capped, so it pulls no further


def test_the_mask_keeps_the_length_and_a_0_db_floor_gives_the_mixture_back():
    model = SpeakerBeam(TINY).eval()
    mixture, embedding = torch.from_numpy(tone(1.0) + tone(1.0, freq=330.0))[None], torch.randn(1, 192)
    with torch.no_grad():
        out = model(mixture, embedding)
        passed = model(mixture, embedding, floor=1.0)
        other = model(mixture, torch.randn(1, 192))
    assert out.shape == mixture.shape and torch.isfinite(out).all()
    assert torch.allclose(passed, mixture, atol=1e-4)  # the STFT pair is exact: the mask is all there is
    assert not torch.allclose(out, other)  # the voice reaches the mask


def test_a_tiny_speaker_beam_learns_to_keep_the_enrolled_voice():
    """Two 'speakers' (a low and a high harmonic tone), each with its own enrollment embedding: the model
    learns to return whichever one it is enrolled with."""
    torch.manual_seed(0)
    model = SpeakerBeam(TINY)
    low, high = torch.from_numpy(tone(0.5, freq=150.0)), torch.from_numpy(tone(0.5, freq=1200.0))
    mixture = torch.stack([low + high, low + high])
    targets, voices = torch.stack([low, high]), torch.nn.functional.normalize(torch.randn(2, 192), dim=-1)
    valid = torch.ones_like(targets)
    before = si_sdr(model(mixture, voices), targets, valid).detach()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(120):
        loss = -si_sdr(model(mixture, voices), targets, valid).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = si_sdr(model(mixture, voices), targets, valid).detach()
    assert (after > before + 10).all() and (after > 15).all()  # dB, for both voices from one mixture


def test_the_recipe_trains_a_checkpoint_that_serves_extraction(mini, speaker_encoder_run, tmp_path, monkeypatch):
    import yaml

    from models.training import load_config
    from studio.cli import main

    tiny = load_config(REPO / "models" / "configs" / "speaker_beam_tiny.yaml")
    config = {**tiny, "model": {**tiny["model"], "speaker_encoder": str(speaker_encoder_run)}}
    path = tmp_path / "speaker_beam_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["train", "speaker_beam", "--config", str(path), "--data", str(mini[0]), "--out", str(out)]) == 0
    export = out / "export"
    assert registry.checkpoint_role(export) == SPEECH_TO_SPEECH
    assert "extract_si_sdr_i" in registry.read_card(export / "README.md")["metrics"]
    wav = tone(1.0)
    result, info = pipelines.extract(wav + tone(1.0, freq=500.0), audio.SAMPLE_RATE, wav, audio.SAMPLE_RATE,
                                     model=str(export), seed=0)
    assert result.shape == wav.shape and np.isfinite(result).all() and info["floor_db"] == -60
    with pytest.raises(ValueError, match="does not do speech-enhancement"):
        pipelines.enhance(wav, audio.SAMPLE_RATE, model=str(export))
