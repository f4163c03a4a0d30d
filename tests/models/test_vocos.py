import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from models import audio, registry
from models import vocoder as vocoder_module
from models.roles import VOCODER, MelVocoder
from models.training.vocos import reconstruction_losses
from models.vocoder import HIFIGAN, Vocoder, check_vocoder, current_vocoder, get_vocoder, use_vocoder
from models.vocos import InverseSTFT, Vocos, VocosConfig

REPO = Path(__file__).resolve().parents[2]
TINY = VocosConfig(dim=32, intermediate=64, layers=2)


def test_output_is_frames_times_hop_and_plays_the_role():
    model = Vocos(TINY)
    assert isinstance(model, MelVocoder) and registry.role_of("vocos") == VOCODER
    for frames in (1, 7, 64):
        assert model(torch.zeros(2, 80, frames) - 5).shape == (2, frames * 256)


def test_the_inverse_stft_undoes_the_mels_framing():
    istft = InverseSTFT(1024, 256)
    wav = torch.randn(2, 256 * 40) * 0.1
    assert torch.allclose(istft(istft.analyze(wav)), wav, atol=1e-5)
    mel = audio.mel_spectrogram(wav[0])
    assert istft.analyze(wav).shape[-1] == mel.shape[-1]  # one spectrum frame per mel frame


def test_a_tiny_vocos_overfits_one_utterance(arctic_wav):
    torch.manual_seed(0)
    wav = torch.from_numpy(arctic_wav[22050: 22050 + 256 * 32])[None]
    mel = audio.mel_spectrogram(wav)
    model = Vocos(VocosConfig(dim=64, intermediate=128, layers=2))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    for _ in range(300):
        parts = reconstruction_losses(model, mel, wav)[0]
        assert all(part.requires_grad for part in parts.values())  # the mel loss too: a constant would not train
        loss = parts["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


def test_chunked_decoding_equals_one_pass_away_from_the_edges():
    torch.manual_seed(0)
    vocos = Vocoder(Vocos(TINY), name="vocos")
    reach = vocos.generator.receptive_frames
    assert vocos.context_frames > reach and vocos.tail_frames > reach
    mel = torch.randn(80, 150) - 4
    whole = vocos.synthesize(mel)
    vocos.chunk_frames = 40
    chunked = vocos.synthesize(mel)
    assert whole.shape == chunked.shape == (150 * 256,)
    assert torch.allclose(whole, chunked, atol=1e-4)


def test_bf16_synthesis_stays_close_to_fp32():
    torch.manual_seed(0)
    model = Vocos(TINY)
    mel = torch.randn(80, 40) - 4
    fp32 = Vocoder(copy.deepcopy(model), precision="fp32", name="vocos").synthesize(mel)
    bf16 = Vocoder(model, precision="bf16", name="vocos").synthesize(mel)  # the head and the iSTFT in float32
    assert bf16.dtype == torch.float32 and model.head.weight.dtype == torch.bfloat16
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max()


def test_a_vocoder_is_chosen_by_name_per_context(tmp_path, monkeypatch):
    monkeypatch.delenv("STUDIO_VOCODER", raising=False)
    assert current_vocoder() == HIFIGAN
    card = {"data": "none (test)", "steps": 0, "wall_time_s": 0.0, "device": "cpu", "metrics": {}}
    folder = str(registry.save_checkpoint(Vocos(TINY), {"model": "vocos", **TINY.to_dict()}, card, tmp_path / "vocos"))
    with use_vocoder(folder):
        assert current_vocoder() == folder
        chosen = get_vocoder("cpu")
        assert chosen.name == folder and isinstance(chosen.generator, Vocos)
        assert chosen.synthesize(torch.zeros(80, 10) - 5).shape == (2560,)
    assert current_vocoder() == HIFIGAN
    monkeypatch.setenv("STUDIO_VOCODER", folder)
    assert current_vocoder() == folder
    with pytest.raises(ValueError, match="not a vocoder"):
        check_vocoder("semantic_tokenizer")
    with pytest.raises(ValueError, match="no such checkpoint"):
        check_vocoder("no_such_vocoder")


def test_the_recipe_trains_and_exports_a_vocoder(mini, tmp_path):
    from studio.cli import main

    out = tmp_path / "vocos"
    assert main(["train", "vocos", "--config", str(REPO / "models/configs/vocos_tiny.yaml"),
                 "--data", str(mini[0]), "--out", str(out)]) == 0
    assert registry.checkpoint_role(out / "export") == VOCODER
    model = registry.load_checkpoint(out / "export", "cpu")[0]
    assert model(torch.zeros(1, 80, 5) - 5).shape == (1, 5 * 256)
    assert np.isfinite(registry.read_card(out / "export" / "README.md")["steps"])
    assert vocoder_module.HIFIGAN in vocoder_module.vocoder_names()


def test_recording_conditions_give_each_read_its_own_audio(arctic_wav):
    from models.training.vocos import VocosTask

    clean = VocosTask({"model": "vocos", "dim": 32, "intermediate": 64, "layers": 2}).feature()
    conditioned = VocosTask({"model": "vocos", "dim": 32, "intermediate": 64, "layers": 2,
                             "conditions": True}).feature()
    assert conditioned.name != clean.name and not conditioned.cached  # a new draw at every read, never cached
    wav = arctic_wav[: audio.SAMPLE_RATE]
    assert np.allclose(clean.compute(wav).numpy(), wav)
    torch.manual_seed(0)
    draws = [conditioned.compute(wav) for _ in range(6)]
    assert all(d.shape == (1, len(wav)) and torch.isfinite(d).all() and d.abs().max() <= 1 for d in draws)
    assert sum(not torch.allclose(d[0], torch.from_numpy(wav)) for d in draws) >= 2
    assert not torch.allclose(draws[0], draws[1]) or not torch.allclose(draws[1], draws[2])
