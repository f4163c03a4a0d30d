"""The latent RVQ codec (models/latent_rvq.py): residual layers over a latent codec's latents."""

import numpy as np
import pytest
import torch

from models.latent_rvq import LatentRVQ, LatentRVQConfig
from models.training.quantization import residual_kmeans
from tests.conftest import tone


def codec(layers=4, size=32) -> LatentRVQ:
    config = LatentRVQConfig.from_dict({"codebooks": layers, "codebook_size": size,
                                        "fitted": {"latent_dim": 64, "mean": [0.1] * 64, "std": [2.0] * 64}})
    return LatentRVQ(config).eval()


def test_each_layer_quantizes_what_the_ones_below_left():
    torch.manual_seed(0)
    model = codec()
    x = torch.randn(2000, 64)
    with torch.no_grad():
        model.codewords.copy_(residual_kmeans(x, 4, 32, seed=0))
        errors = [float((model.quantize(x, layers)[1] - x).pow(2).mean()) for layers in range(1, 5)]
        ids, quantized = model.quantize(x)
        assert ids.shape == (4, 2000) and torch.allclose(model.dequantize(ids), quantized, atol=1e-5)
        assert torch.allclose(model.dequantize(ids[:2]), model.quantize(x, 2)[1], atol=1e-5)
    assert all(a > b for a, b in zip(errors, errors[1:]))  # every layer removes more of the error


def test_the_codec_serves_one_window_and_states_its_bitrate():
    model = codec(layers=8, size=1024)
    assert model.windows == (1,) and model.check_window(None) == 1
    assert model.bitrate_at() == pytest.approx(22050 / 256 / 4 * 8 * 10)
    with pytest.raises(ValueError, match="window must be 1"):
        model.check_window(4)


def test_tokens_round_trip_through_the_latent_codec_and_bad_tokens_are_refused():
    model = codec()
    tokens = model.encode_wav(tone(1.0))
    assert tokens.dtype == np.int64 and tokens.shape[0] == 4 and tokens.shape[1] == pytest.approx(21.5, abs=1.5)
    assert len(model.decode_tokens(tokens[:1])) == len(model.decode_tokens(tokens)) > 0.9 * 22050  # coarser, as long
    with pytest.raises(ValueError, match="0..31"):
        model.decode_tokens(np.full((4, 5), 32))
    with pytest.raises(ValueError, match="layers"):
        model.decode_tokens(np.zeros((5, 5), dtype=np.int64))


def test_quantized_latents_per_item_depth_match_the_first_layers_tokens():
    """quantize_latents (what a decoder trained with quantizer dropout learns from) gives each item the latents
    its first k tokens decode to."""
    torch.manual_seed(0)
    model = codec()
    latents = torch.randn(2, 64, 7)
    with torch.no_grad():
        out = model.quantize_latents(latents, torch.tensor([1, 3]))
        for item, layers in enumerate((1, 3)):
            ids, _ = model.quantize(model.standardize(latents[item].T))
            expected = model.dequantize(ids[:layers]) * model.std + model.mean
            assert torch.allclose(out[item].T, expected, atol=1e-5)
    with pytest.raises(ValueError, match="layers must be one count in 1..4 per item"):
        model.quantize_latents(latents, torch.tensor([1, 5]))


def test_the_tokens_are_spoken_by_the_decoder_codec_when_one_is_named():
    """`decoder` names the latent codec whose decoder speaks the tokens (fine-tuned on them); by default the
    quantized codec's own decoder."""
    from models import registry

    base = codec()
    tokens = base.encode_wav(tone(1.0))
    own = base.decode_tokens(tokens)
    config = LatentRVQConfig.from_dict({"codebooks": 4, "codebook_size": 32, "decoder": "flow_vae_v1",
                                        "fitted": {"latent_dim": 64, "mean": [0.1] * 64, "std": [2.0] * 64}})
    named = LatentRVQ(config).eval()
    named.load_state_dict(base.state_dict())
    latents = (named.dequantize(torch.as_tensor(tokens)) * named.std + named.mean).detach().numpy()
    expected = registry.load_model("flow_vae_v1", "cpu")[0].decode_wav(latents)
    assert np.allclose(named.decode_tokens(tokens), expected) and not np.allclose(own, expected)


def test_publish_sets_a_declared_stage_to_a_checkpoint_of_its_role(tmp_path, monkeypatch, capsys):
    """`publish --stage decoder=CKPT` writes a copy whose config composes that checkpoint, and says so on the
    card; an undeclared setting or a checkpoint of another role is one clear line."""
    from models import registry
    from studio.cli import main

    card = {"data": "none", "steps": 0, "wall_time_s": 0.0, "device": "cpu", "metrics": {}}
    base = codec()
    folder = registry.save_checkpoint(base, {**base.config.to_dict(), "model": "latent_rvq"}, card, tmp_path / "rvq")
    decoder, tokenizer = str(registry.resolve("flow_vae_v1")), str(registry.resolve("semantic_tokenizer"))
    monkeypatch.setattr(registry, "CHECKPOINT_DIR", tmp_path / "assets")
    assert main(["publish", str(folder), "rvq_v1dec", "--stage", f"decoder={decoder}"]) == 0
    assert registry.checkpoint_config(tmp_path / "assets" / "rvq_v1dec")["decoder"] == decoder
    assert registry.read_card(tmp_path / "assets" / "rvq_v1dec" / registry.CARD)["stages"] == {"decoder": decoder}
    assert main(["publish", str(folder), "x", "--stage", f"vocoder={decoder}"]) == 2
    assert "latent_rvq composes no stage 'vocoder'" in capsys.readouterr().err
    assert main(["publish", str(folder), "x", "--stage", f"decoder={tokenizer}"]) == 2
    assert "is a semantic_tokenizer checkpoint, not a latent_codec one" in capsys.readouterr().err
    assert main(["publish", str(folder), "x", "--stage", "decoder=no_such_codec"]) == 2
    assert "no checkpoint 'no_such_codec'" in capsys.readouterr().err
