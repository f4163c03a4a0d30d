import math
from pathlib import Path

import numpy as np
import torch

from models import registry
from models.roles import SPEAKER_ENCODER, SpeakerEncoder
from models.speaker_encoder import SpeakerEncoder as ECAPA
from models.speaker_encoder import SpeakerEncoderConfig
from models.training.speaker_encoder import additive_angular_margin

REPO = Path(__file__).resolve().parents[2]
TINY = SpeakerEncoderConfig(channels=32, dilations=(2, 3), se_channels=8, attention_channels=8, embedding_dim=16)


def test_embeddings_are_unit_length_and_ignore_a_constant_channel_gain():
    torch.manual_seed(0)
    model = ECAPA(TINY).eval()
    assert isinstance(model, SpeakerEncoder) and registry.role_of("speaker_encoder") == SPEAKER_ENCODER
    mel = torch.randn(80, 120)
    e = model.embed_mel(mel)
    assert e.shape == (16,) and math.isclose(float(e.norm()), 1.0, rel_tol=1e-5)
    # a fixed EQ adds a constant to each log-mel band: mean normalization removes it
    assert torch.allclose(model.embed_mel(mel + torch.linspace(-2, 2, 80)[:, None]), e, atol=1e-5)
    assert not torch.allclose(model.embed_mel(torch.randn(80, 120)), e, atol=1e-3)


def test_additive_angular_margin_penalizes_the_true_class_only():
    weights = torch.eye(3)
    embeddings = torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.0]])
    labels = torch.tensor([0, 1])
    plain, accuracy = additive_angular_margin(embeddings, weights, labels, margin=0.0, scale=10.0)
    margin, _ = additive_angular_margin(embeddings, weights, labels, margin=0.2, scale=10.0)
    assert accuracy == 1.0 and margin > plain
    # with no margin it is the softmax cross-entropy of scaled cosines
    cosine = torch.nn.functional.normalize(embeddings, dim=-1) @ weights.T
    assert torch.isclose(plain, torch.nn.functional.cross_entropy(10 * cosine, labels))


def test_aam_training_separates_synthetic_speakers():
    """Four 'speakers', each its own pattern of how much each band varies over time (a constant shape
    would be removed by the mean normalization): a few steps of AAM make the embeddings of one
    speaker's clips closer to each other than to another speaker's."""
    torch.manual_seed(0)
    model = ECAPA(TINY)
    directions = torch.nn.Parameter(torch.randn(4, 16) * 0.01)
    spreads = 0.2 + 2 * torch.rand(4, 80, 1)
    optimizer = torch.optim.Adam(list(model.parameters()) + [directions], lr=3e-3)

    def batch(n=16):
        labels = torch.arange(n) % 4
        return spreads[labels] * torch.randn(n, 80, 60) + torch.randn(n, 80, 1), labels

    for _ in range(60):
        mel, labels = batch()
        loss, _ = additive_angular_margin(model(mel), directions, labels, 0.2, 30.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    mel, labels = batch(32)
    e = torch.nn.functional.normalize(model(mel).detach(), dim=-1)
    scores = e @ e.T
    same = labels[:, None] == labels[None]
    off_diagonal = ~torch.eye(32, dtype=bool)
    assert scores[same & off_diagonal].mean() > scores[~same].mean() + 0.3


def test_training_exports_the_encoder_alone(mini, tmp_path):
    from studio.cli import main

    out = tmp_path / "spk"
    assert main(["train", "speaker_encoder", "--config", str(REPO / "models/configs/speaker_encoder_tiny.yaml"),
                 "--data", str(mini[0]), "--out", str(out)]) == 0
    model, config, _ = registry.load_model(str(out / "export"), "cpu")
    assert isinstance(model, ECAPA) and config["embedding_dim"] == 16
    wav = np.random.default_rng(0).normal(0, 0.1, 22050).astype(np.float32)
    assert model.embed_wav(wav).shape == (16,)


def test_the_corpus_speaker_count_runs_on_our_encoder(mini, speaker_encoder_run, sled_run, tmp_path):
    import pytest

    from evaluation.speakers import distinct_speakers

    report = distinct_speakers(mini[0], per_speaker=2, encoder=str(speaker_encoder_run), out=tmp_path / "s.json",
                               log=lambda _: None)
    assert report["speaker_model"].startswith("speaker encoder") and (tmp_path / "s.json").is_file()
    assert report["heldout_speakers"] >= 2 and 0 <= report["heldout_utterance_eer"] <= 1
    assert 1 <= report["distinct"] <= report["speakers"]
    with pytest.raises(ValueError, match="not a speaker-encoder"):
        distinct_speakers(mini[0], per_speaker=2, encoder=str(sled_run))
