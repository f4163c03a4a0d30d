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
