"""The backend contract (models.roles, models.registry): every registered backend, through its tiny
config, builds, survives a safetensors round trip unchanged, answers its role's smoke call, trains
two steps with finite losses and resumes. And a backend added by registering alone (here an
identity codec defined in this file) appears in the pipelines, the evaluation systems and the
studio's menus without an edit anywhere else."""

import csv
import math

import numpy as np
import pytest
import torch

from models import audio, pipelines, registry
from models.roles import (
    LATENT_CODEC,
    SPEAKER_ENCODER,
    TOKEN_CODEC,
    TTS,
    LatentCodec,
    SpeakerEncoder,
    TokenCodec,
    TTSGenerator,
    TTSRequest,
)
from models.training import Trainer, load_config
from tests.conftest import REPO, tone

TINY_CONFIGS = sorted((REPO / "models" / "configs").glob("*_tiny.yaml"))
CARD = {"data": "none (contract test)", "steps": 0, "wall_time_s": 0.0, "device": "cpu", "metrics": {}}


def tiny(path) -> tuple[str, dict]:
    config = load_config(path)
    return config["model"]["model"], config


def smoke(model, role: str):
    """The role's smoke call, deterministic: what the round trip must reproduce."""
    torch.manual_seed(0)
    if role == LATENT_CODEC:
        assert isinstance(model, LatentCodec)
        mean, _ = model.encode_wav(tone(1.0))
        decoder = model.streaming_decoder()
        streamed = np.concatenate([decoder.push(list(torch.from_numpy(mean))), decoder.flush()])
        assert mean.shape[1] == model.latent_dim and len(streamed) > 0.5 * audio.SAMPLE_RATE
        return mean
    if role == TTS:
        assert isinstance(model, TTSGenerator)
        frames = list(model.frames(TTSRequest("one two three.", seed=3, controls={"stop_threshold": 0.99})))
        assert frames and all(torch.isfinite(f).all() for f in frames)
        return torch.stack(frames).numpy()
    if role == TOKEN_CODEC:
        assert isinstance(model, TokenCodec)
        tokens = model.encode_wav(tone(1.0))
        assert tokens.dtype == np.int64 and tokens.shape[0] == model.num_codebooks
        assert 0 <= tokens.min() and tokens.max() < model.codebook_size
        embedded = model.embed(tokens)
        assert embedded.shape[0] == tokens.shape[1] and len(model.decode_tokens(tokens)) > 0.5 * audio.SAMPLE_RATE
        return np.concatenate([tokens.ravel().astype(np.float32), embedded.ravel()])
    if role == SPEAKER_ENCODER:
        assert isinstance(model, SpeakerEncoder)
        embedding = model.embed_wav(tone(1.0))
        assert embedding.shape == (model.embedding_dim,) and np.isclose(np.linalg.norm(embedding), 1.0, atol=1e-5)
        return embedding
    raise AssertionError(f"no smoke call for role {role}")


@pytest.mark.parametrize("path", TINY_CONFIGS, ids=lambda p: p.stem)
def test_builds_round_trips_and_answers_its_role(path, tmp_path):
    name, config = tiny(path)
    role = registry.role_of(name)
    torch.manual_seed(0)
    model = registry.builder(name)(config["model"]).eval()
    before = smoke(model, role)
    folder = registry.save_checkpoint(model, {**config["model"], "model": name}, CARD, tmp_path / name)
    loaded, _, _ = registry.load_checkpoint(folder, "cpu")
    assert np.array_equal(smoke(loaded, role), before)


@pytest.mark.slow
@pytest.mark.parametrize("path", TINY_CONFIGS, ids=lambda p: p.stem)
def test_two_steps_train_with_finite_losses_and_resume(path, tmp_path, mini, sled_run, speaker_encoder_run):
    name, config = tiny(path)
    if "codec" in config["model"]:  # a generator of latents: the tiny codec trained for sled_run
        config["model"]["codec"] = str(sled_run.parents[1] / "vae" / "export")
    if "speaker_encoder" in config["model"]:  # a speaker-conditioned generator: the tiny trained encoder
        config["model"]["speaker_encoder"] = str(speaker_encoder_run)
    config["train"].update(steps=2, checkpoint_every=2, val_every=100, log_every=1)
    run = tmp_path / "run"
    state = Trainer(name, config, data=str(mini[0]), out=str(run), device="cpu", log=lambda _: None).run()
    assert state["step"] == 2
    rows = list(csv.DictReader(open(run / "log.csv")))
    losses = [float(v) for row in rows for k, v in row.items() if k not in ("step", "wall_time_s", "lr") and v]
    assert len(rows) == 2 and losses and all(math.isfinite(v) for v in losses)  # every logged loss term
    config["train"]["steps"] = 3
    state = Trainer(name, config, data=str(mini[0]), out=str(run), resume=True, device="cpu",
                    log=lambda _: None).run()
    assert state["step"] == 3


# ---------------------------------------------------------- a backend added by registering alone


@registry.register("identity_codec", role=LATENT_CODEC)
class IdentityCodec(torch.nn.Module):
    """The log-mel as the latent: the smallest latent codec there is."""

    sample_rate, frame_rate, latent_dim = audio.SAMPLE_RATE, audio.SAMPLE_RATE / 256, 80

    def __init__(self, config: dict):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(1))

    def encode_wav(self, wav):
        return (audio.mel_spectrogram(wav) * self.gain).T.detach().numpy(), None

    def decode_wav(self, latents, precision="fp32"):
        from models.vocoder import get_vocoder

        mel = torch.as_tensor(np.asarray(latents), dtype=torch.float32).T
        return get_vocoder("cpu", precision).synthesize(mel).numpy()

    def streaming_decoder(self, precision="fp32"):
        from models.vocoder import ChunkedDecoder

        return ChunkedDecoder(lambda mel: mel.T, 1, frame_context=0, frame_lookahead=0, precision=precision)


def test_a_registered_backend_appears_everywhere_without_other_edits(tmp_path, monkeypatch):
    from evaluation.systems import parse_system
    from studio.config import default_systems

    monkeypatch.setattr(registry, "CHECKPOINT_DIR", tmp_path)
    registry.save_checkpoint(IdentityCodec({}), {"model": "identity_codec"}, CARD, tmp_path / "ident")
    assert pipelines.available_latent_codecs() == ["ident"] and "ident" in pipelines.available_codecs()
    assert pipelines.available_tts_models() == []
    codec, _, _ = registry.load_model("ident", "cpu")
    mel, _ = codec.encode_wav(tone(1.0))
    decoder = codec.streaming_decoder()
    frames = list(torch.from_numpy(mel))
    streamed = np.concatenate([decoder.push(frames[:40]), decoder.push(frames[40:]), decoder.flush()])
    assert np.abs(streamed - codec.decode_wav(mel)).max() < 0.05 * np.abs(streamed).max()  # the generic chunking
    out, info = pipelines.reconstruct(tone(1.0), audio.SAMPLE_RATE, codec="ident", device="cpu")
    assert len(out) > 0.9 * audio.SAMPLE_RATE and info["codec"] == "ident"
    mean, std = pipelines.encode_latents(tone(1.0), audio.SAMPLE_RATE, codec="ident", device="cpu")
    assert mean.shape[1] == 80 and std is None
    assert parse_system("x=ident").kind == "codec"
    assert "ident=ident" in default_systems()
    with pytest.raises(ValueError, match="not a TTS model"):
        pipelines.tts("hello", model="ident")


def test_speech_to_speech_answers_until_a_backend_registers():
    wav = tone(1.0)
    with pytest.raises(ValueError, match="no voice-conversion backend is installed"):
        pipelines.convert(wav, audio.SAMPLE_RATE, wav, audio.SAMPLE_RATE)
    with pytest.raises(ValueError, match="no speech-enhancement backend is installed"):
        pipelines.enhance(wav, audio.SAMPLE_RATE)
    with pytest.raises(ValueError, match="no target-speaker-extraction backend is installed"):
        pipelines.extract(wav, audio.SAMPLE_RATE, wav, audio.SAMPLE_RATE)


def test_a_backend_that_fails_to_import_reports_its_real_error(tmp_path, monkeypatch):
    import models

    (tmp_path / "broken_backend_for_test.py").write_text("import a_package_that_is_not_installed\n")
    monkeypatch.setattr(models, "__path__", [*models.__path__, str(tmp_path)])  # as if it were models/<file>
    with pytest.raises(ModuleNotFoundError, match="a_package_that_is_not_installed"):
        registry.builder("broken_backend_for_test")
    with pytest.raises(KeyError, match="No model builder named 'no_such_backend'"):
        registry.builder("no_such_backend")
