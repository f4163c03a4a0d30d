import numpy as np
import pytest
import torch

from models import registry
from models.flow_vae import AffineCoupling, Flow, FlowVAE, FlowVAEConfig, flow_kl
from models.modules import MultiDiscriminator, discriminator_loss, feature_matching_loss
from models.training.flow_vae import FlowVAETask, warp_frequencies

CARD = {"data": "none", "steps": 0, "wall_time_s": 0.0, "device": "cpu", "metrics": {}}
TINY = dict(latent_dim=8, channels=16, dilations=(1, 3), flow_layers=2, flow_hidden=16, flow_kernel=3)


def randomize_flow(flow: Flow, scale: float = 0.5) -> Flow:
    """New couplings start as the identity; give them weights so the tests mean something."""
    torch.manual_seed(0)
    for coupling in flow.couplings:
        torch.nn.init.normal_(coupling.proj.weight, std=scale)
        torch.nn.init.normal_(coupling.proj.bias, std=scale)
    return flow


def test_shapes_and_frame_rate():
    config = FlowVAEConfig(**TINY)
    assert config.frame_rate == pytest.approx(22050 / 256 / 4) and config.frame_rate <= 25
    model = FlowVAE(config)
    mel = torch.randn(2, 80, 130)
    out = model(mel, torch.tensor([130, 101]))
    assert out["mu"].shape == (2, 8, 33) and out["log_sigma"].shape == (2, 8, 33)
    assert out["mel_hat"].shape == mel.shape
    assert out["mask"][1, 0].sum() == 26  # ceil(101 / 4) latent frames are real
    wav = np.random.default_rng(0).standard_normal(22050).astype(np.float32) * 0.1
    mu, sigma = model.encode_wav(wav)
    assert mu.shape == (22, 8) and (sigma > 0).all()  # 86 mel frames -> 22 latent frames
    assert model.decode_wav(mu).shape == (22 * 4 * 256,)


def test_flow_inverts_exactly_and_log_det_matches_autograd():
    config = FlowVAEConfig(**TINY)
    flow = randomize_flow(Flow(config)).double()
    z = torch.randn(1, 8, 5, dtype=torch.float64)
    mask = torch.ones(1, 1, 5, dtype=torch.float64)
    y, logdet = flow(z, mask)
    assert not torch.allclose(y, z)  # not the identity
    assert torch.allclose(flow.inverse(y, mask), z, atol=1e-4)
    jacobian = torch.autograd.functional.jacobian(lambda x: flow(x.view(1, 8, 5), mask)[0].flatten(), z.flatten())
    assert logdet.item() == pytest.approx(torch.linalg.slogdet(jacobian)[1].item(), abs=1e-6)


def test_masked_frames_do_not_change_the_log_det():
    coupling = AffineCoupling(8, 16, 3)
    torch.nn.init.normal_(coupling.proj.weight, std=0.5)
    z = torch.randn(1, 8, 6)
    mask = torch.tensor([[[1, 1, 1, 1, 0, 0]]], dtype=torch.float32)
    _, full = coupling(z, mask)
    z2 = z.clone()
    z2[..., 4:] = 100.0  # padding content is irrelevant
    _, padded = coupling(z2, mask)
    assert full.item() == pytest.approx(padded.item(), abs=1e-5)


def test_kl_is_the_closed_form_when_the_flow_is_the_identity():
    torch.manual_seed(0)
    identity = Flow(FlowVAEConfig(**{**TINY, "flow_layers": 0}))
    mu, log_sigma = torch.randn(1, 8, 4), 0.5 * torch.randn(1, 8, 4)
    mask = torch.ones(1, 1, 4)
    estimates = [flow_kl(mu, log_sigma, torch.randn(1, 8, 4), identity, mask) for _ in range(4000)]
    closed = (0.5 * (mu ** 2 + (2 * log_sigma).exp()) - log_sigma - 0.5).mean()
    assert torch.stack(estimates).mean().item() == pytest.approx(closed.item(), abs=0.02)


def test_a_tiny_overfit_lowers_the_loss():
    torch.manual_seed(0)
    task = FlowVAETask(TINY)
    model = task.build()
    optimizer = torch.optim.AdamW(model.parameters(), 3e-3)
    batch = {"features": torch.randn(2, 80, 64).cumsum(-1) * 0.1 - 5, "feature_lengths": torch.tensor([64, 64])}
    first = None
    for _ in range(25):
        loss, logs, _ = task.losses(model, batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first if first is not None else logs["recon"]
    assert logs["recon"] < 0.5 * first


def test_frequency_warp_moves_energy_along_the_mel_axis():
    mel = torch.full((3, 80, 5), -10.0)
    mel[:, 20] = 0.0  # one bright band at bin 20
    warped = warp_frequencies(mel, torch.tensor([1.0, 1.5, 0.5]))
    assert torch.equal(warped[0], mel[0])  # factor 1 is the identity
    assert warped[1].mean(-1).argmax() == 30 and warped[2].mean(-1).argmax() == 10
    assert torch.equal(warped[2, 79], mel[2, 79])  # past the top: the top bin repeats
    warped_task, plain_task = FlowVAETask({**TINY, "warp": 0.2}), FlowVAETask(TINY)
    model = plain_task.build()
    batch = {"features": torch.randn(2, 80, 16).cumsum(1), "feature_lengths": torch.tensor([16, 16])}

    def recon(task):
        torch.manual_seed(0)
        return task.losses(model, batch, 0)[1]["recon"]

    model.eval()  # the warp is for training only
    assert recon(warped_task) == recon(plain_task)
    model.train()
    assert recon(warped_task) != recon(plain_task)


def test_waveform_head_discriminators_and_feature_matching_run_a_step():
    torch.manual_seed(0)
    task = FlowVAETask({**TINY, "waveform_head": True, "wave_channels": 16})
    model, discriminator = task.build(), task.discriminator()
    assert isinstance(discriminator, MultiDiscriminator) and len(discriminator.discriminators) == 8
    wav = 0.1 * torch.randn(2, 1, 32 * 256)
    batch = {"features": wav, "feature_lengths": torch.tensor([32 * 256, 32 * 256])}
    loss, logs, cache = task.losses(model, batch, 0)
    assert {"adv", "fm", "wave_mel", "recon", "kl"} <= set(logs) and cache[1].shape == (2, 32 * 256)
    loss.backward()
    assert model.waveform_head.net[0].weight.grad.abs().sum() > 0
    d_loss, d_logs = task.discriminator_loss(discriminator, cache)
    d_loss.backward()
    assert d_logs["disc"] > 0
    real, fake = discriminator(cache[0]), discriminator(cache[1])
    assert discriminator_loss(real, fake) > 0 and feature_matching_loss(real, fake) > 0


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    config = FlowVAEConfig(**TINY)
    model = FlowVAE(config).eval()
    randomize_flow(model.flow)
    folder = registry.save_checkpoint(model, config.to_dict(), {"data": "test", "steps": 0, "wall_time_s": 0.0,
                                                                "device": "cpu", "metrics": {}}, tmp_path / "vae")
    loaded, saved_config, card = registry.load_checkpoint(folder, "cpu")
    assert saved_config["model"] == "flow_vae" and card["steps"] == 0
    mel = torch.randn(1, 80, 40)
    with torch.no_grad():
        assert torch.equal(model.encode(mel)[0], loaded.encode(mel)[0])
        z = torch.randn(1, 8, 10)
        assert torch.equal(model.decode(z), loaded.decode(z))
        mask = torch.ones(1, 1, 10)
        assert torch.equal(model.flow(z, mask)[0], loaded.flow(z, mask)[0])


def test_bench_codec_separates_encoder_from_decoder(sled_run, mini, tmp_path):
    from evaluation.bench import bench_codec

    codec = sled_run.parent.parent / "vae" / "export"
    result = bench_codec(str(codec), mini[0] / "eval" / "tts_seen.lst", per_speaker=1, steps=20)
    assert result["utterances"] >= 2 and len({r["speaker"] for r in result["items"]}) == result["utterances"]
    # latents fitted to the decoder reconstruct at least as well as the encoder's own
    assert all(r["optimized_mel_l1"] <= r["encoded_mel_l1"] for r in result["items"])
    seen = mini[0] / "eval" / "tts_seen.lst"
    no_truth = tmp_path / "no_ground_truth.lst"  # target text only: nothing to reconstruct
    rows = [line.split("|") for line in seen.read_text().splitlines()]
    no_truth.write_text("".join(f"{r[0]}|{r[1]}|{(seen.parent / r[2]).resolve()}|{r[3]}\n" for r in rows))
    with pytest.raises(ValueError, match="no utterance with a reference"):
        bench_codec(str(codec), no_truth, per_speaker=1, steps=1)


def test_a_quantizer_trains_the_decoder_alone_on_coarse_latents_of_random_depth(tmp_path):
    """With `quantizer` (a latent RVQ over the codec's latents), each crop's posterior means reach the decoder
    through a drawn number of the RVQ's layers: the loss moves the decoder only, the depths follow
    `quantizer_layers` and the step, and validation scores the lowest and highest depth."""
    from models.latent_rvq import LatentRVQ, LatentRVQConfig
    from models.roles import Scorers

    torch.manual_seed(0)
    rvq = LatentRVQ(LatentRVQConfig.from_dict({"codebooks": 4, "codebook_size": 16, "fitted": {"latent_dim": 8}}))
    folder = registry.save_checkpoint(rvq, {**rvq.config.to_dict(), "model": "latent_rvq"}, CARD, tmp_path / "rvq")
    task = FlowVAETask({**TINY, "quantizer": str(folder), "quantizer_layers": [1, 3]})
    model = task.build()
    codec_folder = registry.save_checkpoint(model, {**task.config.to_dict(), "model": "flow_vae"}, CARD,
                                            tmp_path / "vae")
    rvq.config.latent_codec = str(codec_folder)  # the codebooks were fit on this model's latents
    folder = registry.save_checkpoint(rvq, {**rvq.config.to_dict(), "model": "latent_rvq"}, CARD, tmp_path / "rvq")
    batch = {"features": torch.randn(4, 80, 32).cumsum(-1) * 0.1 - 5, "feature_lengths": torch.tensor([32] * 4)}
    loss, logs, _ = task.losses(model, batch, 5)
    loss.backward()
    assert "kl" not in logs and 1 <= logs["layers"] <= 3
    assert model.decoder.mel_head[1].weight.grad.abs().sum() > 0
    assert task.losses(model, batch, 5)[1]["layers"] == logs["layers"]  # the step's draw: a resume repeats it
    depths = torch.cat([task.depths(rvq, 64, step) for step in range(4)])
    assert set(depths.tolist()) == {1, 2, 3}
    with pytest.raises(ValueError, match="quantizer_layers"):
        FlowVAEConfig.from_dict({**TINY, "quantizer_layers": [3, 1]})
    other = FlowVAETask({**TINY, "quantizer": str(folder)})
    with pytest.raises(ValueError, match="was fit on .* latents: start from that codec"):
        other.losses(other.build(), batch, 0)  # a new encoder: the codebooks do not fit its latents
    with pytest.raises(ValueError, match="latent RVQ over 16-dim"):
        FlowVAETask({**TINY, "latent_dim": 16, "quantizer": str(folder)}).quantizer(torch.device("cpu"))
    model.eval()
    items = [{"id": "a", "manifest": str(tmp_path / "m.jsonl"), "path": str(tmp_path / "a.wav")}]
    from models import audio
    from tests.conftest import tone

    audio.save_audio(tmp_path / "a.wav", tone(1.0))
    with torch.no_grad():
        task.validate(model, items, tmp_path / "val", Scorers())
    assert {p.name for p in (tmp_path / "val").glob("*.wav")} == {"a_q1.wav", "a_q3.wav"}
