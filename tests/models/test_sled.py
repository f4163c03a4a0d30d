import csv

import numpy as np
import pytest
import torch

from models import registry
from models.flow_vae import FlowVAE, FlowVAEConfig
from models.kalle import KALLE
from models.modules import EOT, LATENT, TEXT, layout, positions
from models.sled import SLED, GenerativeHead, SLEDConfig, diagonal_alignment, energy_distance
from models.training import load_config
from studio.cli import main

TINY = load_config(registry.REPO_ROOT / "models" / "configs" / "sled_tiny.yaml")


def tiny(**overrides) -> SLED:
    torch.manual_seed(0)
    model = SLED(SLEDConfig.from_dict({**TINY["model"], "frontend": None, **overrides})).eval()
    for module in model.head.modules():  # leave the zero init, so outputs depend on weights and noise
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.1)
    return model


def tokens(model: SLED, text: str = "hello world") -> list[int]:
    return model.frontend.encode([text])[0]


def test_energy_distance_is_minimal_for_samples_at_the_target():
    y = torch.tensor([[1.0, -2.0]])
    at_target = energy_distance(y, y, y)
    assert float(at_target) == pytest.approx(0.0, abs=1e-3)
    for offset in ([0.1, 0.0], [0.0, -0.5], [1.0, 1.0]):  # zero-variance samples off the target
        c = y + torch.tensor([offset])
        assert float(energy_distance(c, c, y)) > float(at_target) + 0.05


def test_energy_distance_gradient_pulls_samples_to_a_2d_target_distribution():
    torch.manual_seed(0)
    mean, scale = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 1.5])
    shift = torch.zeros(2, requires_grad=True)
    log_scale = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.Adam([shift, log_scale], lr=0.05)
    for _ in range(600):
        y = mean + scale * torch.randn(256, 2)
        x, x_prime = (shift + log_scale.exp() * torch.randn(2, 256, 2)).unbind(0)
        loss = energy_distance(x, x_prime, y).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.allclose(shift.detach(), mean, atol=0.15)
    assert torch.allclose(log_scale.exp().detach(), scale, atol=0.2)  # the spread is learned, not collapsed


def test_adaln_head_depends_on_the_noise_and_only_on_it():
    torch.manual_seed(0)
    head = GenerativeHead(dim=16, latent_dim=4, noise_dim=8, blocks=2, mult=2)
    for module in head.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.2)
    h = torch.randn(3, 16)
    eps, other = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.equal(head(h, eps), head(h, eps.clone()))
    assert (head(h, eps) - head(h, other)).abs().min() > 1e-4


def test_the_head_and_stop_start_at_zero():
    model = SLED(SLEDConfig.from_dict({**TINY["model"], "frontend": None}))
    h = torch.randn(5, model.config.dim)
    assert torch.equal(model.head(h, torch.randn(5, model.config.noise_dim)), torch.zeros(5, 8))


def test_layouts_put_text_before_the_speech_that_says_it():
    assert layout(3, 2, None) == [TEXT] * 3 + [EOT] + [LATENT] * 2
    kinds = layout(7, 9, (3, 2))
    assert kinds == [TEXT] * 3 + [LATENT] * 2 + [TEXT] * 3 + [LATENT] * 2 + [TEXT] + [EOT] + [LATENT] * 5
    assert layout(7, 1, (3, 2)) == [TEXT] * 3 + [LATENT] + [TEXT] * 4 + [EOT]


def test_aligned_positions_put_text_on_the_frame_axis():
    kinds = layout(3, 2, None)
    assert positions(kinds, None) == [0, 1, 2, 3, 4, 5]
    assert positions(kinds, 1.5) == [0.0, 1.5, 3.0, 4.5, 0.0, 1.0]  # EOT where the text ends
    streaming = layout(4, 3, (2, 2))
    assert positions(streaming, 2.0) == [0.0, 2.0, 0.0, 1.0, 4.0, 6.0, 8.0, 2.0]


def test_an_anchored_prompt_starts_the_new_text_where_the_prompt_speech_ends():
    kinds = layout(5, 8, None)  # 2 prompt symbols spoken in 6 frames, then 3 new symbols
    assert positions(kinds, 1.5, anchor=(2, 6)) == [0.0, 3.0, 6.0, 7.5, 9.0, 10.5, *map(float, range(8))]
    assert positions(kinds, 1.5, anchor=(0, 0)) == positions(kinds, 1.5)  # no prompt: unchanged


def test_text_saliency_is_the_jacobian_norm_and_sees_only_text_already_read():
    model = tiny(interleave=(3, 2))  # streaming: frame k only sees the text that arrived before it
    text = torch.tensor(tokens(model))
    latents = torch.randn(8, model.config.latent_dim)
    saliency = model.text_saliency(text, latents, probes=3000)  # more probes than dimensions: the exact norm
    estimate = model.text_saliency(text, latents, probes=model.config.dim // 2)  # random probes
    assert saliency.shape == estimate.shape == (8, len(text))
    assert torch.equal(saliency == 0, estimate == 0)
    assert abs(float((estimate[saliency > 0] / saliency[saliency > 0]).mean()) - 1) < 0.1
    seq = model.embed([text], [model.normalize(latents)])
    kinds = torch.tensor(layout(len(text), len(latents), (3, 2)))
    text_at = (kinds == TEXT).nonzero()[:, 0]
    for frame in (0, 5):
        before = int(seq["frame_positions"][0][frame]) - 1

        def state(x, before=before):
            return model.transformer(x, seq["positions"])[0, before]

        jacobian = torch.autograd.functional.jacobian(state, seq["x"].detach())[:, 0]  # (dim, length, dim)
        exact = jacobian[:, text_at].pow(2).sum((0, 2)).sqrt()
        assert torch.allclose(saliency[frame], exact, rtol=1e-4, atol=1e-6)
        assert (exact[(text_at > before)] == 0).all() and (exact[text_at < before] > 0).all()


def test_diagonal_alignment_tells_reading_from_ignoring():
    frames, tokens_ = 120, 100
    diagonal = torch.zeros(frames, tokens_)
    diagonal[torch.arange(frames), (torch.arange(frames) * tokens_ / frames).long()] = 1.0
    assert diagonal_alignment(diagonal) == 1.0
    torch.manual_seed(0)
    noise = torch.rand(frames, tokens_)
    assert diagonal_alignment(noise) < 0.35
    assert diagonal_alignment(diagonal.flip(1)) < 0.35  # reading backwards is not reading


def test_history_noise_corrupts_only_the_training_inputs():
    model = tiny(history_noise=0.5)
    text, latents = [torch.tensor(tokens(model))], [torch.randn(6, model.config.latent_dim)]
    clean = tiny()  # the same weights

    def generative(m):
        torch.manual_seed(1)  # the same energy-distance draws
        return m.loss(text, latents)["generative"]

    assert torch.equal(generative(model), generative(clean))  # eval: no noise
    model.train(), clean.train()
    assert not torch.allclose(generative(model), generative(clean))


def test_kv_cache_generation_equals_full_recomputation():
    model = tiny()
    x = torch.randn(2, 11, model.config.dim)
    full = model.transformer(x)
    cache = model.transformer.new_cache()
    pieces = [model.transformer(x[:, :5], cache=cache), model.transformer(x[:, 5:6], cache=cache),
              model.transformer(x[:, 6:], cache=cache)]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"fitted": {"text_rate": 1.3}},
                                       {"fitted": {"text_rate": 1.3}, "interleave": (3, 2)}])
def test_generated_frames_match_a_teacher_forced_pass(overrides):
    """Each frame drawn with the KV cache equals the head applied to a full recomputation."""
    model = tiny(**overrides)
    ids = tokens(model)
    frames = list(model.generate(ids, cfg=None, seed=3, max_frames=6, stop_threshold=2.0))
    seq = model.embed([torch.tensor(ids)], [model.normalize(torch.stack(frames))])
    h = model.transformer(seq["x"], seq["positions"])[0, seq["frame_positions"][0] - 1]
    generator = torch.Generator().manual_seed(3)
    redrawn = torch.cat([model.sample_frame(h[i:i + 1], generator) for i in range(len(frames))])
    assert torch.allclose(model.denormalize(redrawn), torch.stack(frames), atol=1e-4)


def test_cfg_scale_one_equals_the_conditional_model():
    model = tiny()
    ids = tokens(model)
    guided = torch.stack(list(model.generate(ids, cfg=1.0, seed=1, max_frames=8, stop_threshold=2.0)))
    plain = torch.stack(list(model.generate(ids, cfg=None, seed=1, max_frames=8, stop_threshold=2.0)))
    other = torch.stack(list(model.generate(ids, cfg=3.0, seed=1, max_frames=8, stop_threshold=2.0)))
    assert torch.allclose(guided, plain, atol=1e-5)
    assert not torch.allclose(other, plain, atol=1e-3)


def test_the_stop_head_ends_generation():
    model = tiny()
    ids = tokens(model)
    assert len(list(model.generate(ids, seed=0, max_frames=30, stop_threshold=2.0))) == 30  # never fires
    torch.nn.init.zeros_(model.stop_head.weight)
    torch.nn.init.constant_(model.stop_head.bias, 10.0)
    # a head that always fires stops at the floor: min_frames_per_phoneme x the text's symbols, never at once
    floor = max(1, int(model.config.min_frames_per_phoneme * len(ids)))
    assert len(list(model.generate(ids, seed=0, max_frames=30))) == floor
    streaming = tiny(interleave=(3, 2))
    torch.nn.init.zeros_(streaming.stop_head.weight)
    torch.nn.init.constant_(streaming.stop_head.bias, 10.0)
    # the streaming layout speaks while text arrives; stop is only read once EOT is in
    assert len(list(streaming.generate(ids, seed=0, max_frames=30))) == max(2 * (len(ids) - 1) // 3, floor)


def test_a_voice_prompt_is_forced_and_continued():
    model = tiny()
    prompt = torch.randn(4, 8)
    frames = list(model.generate(tokens(model, "one two"), prompt=prompt, seed=0, max_frames=5,
                                 stop_threshold=2.0))
    assert len(frames) == 5  # the prompt is context, not output


def test_an_anchored_prompt_moves_the_new_text_and_nothing_without_a_prompt():
    model = tiny(fitted={"text_rate": 1.3})
    prompt_ids, new_ids = tokens(model, "a prompt transcript"), tokens(model, "one two")

    def speak(prompt, anchor):
        ids = prompt_ids + new_ids if prompt is not None else new_ids
        return torch.stack(list(model.generate(ids, prompt=prompt, seed=0, max_frames=4, stop_threshold=2.0,
                                               prompt_symbols=len(prompt_ids) if prompt is not None else 0,
                                               anchor_prompt=anchor)))

    prompt = torch.randn(40, 8)  # far slower than the model's rate: the anchor moves the new text a long way
    assert not torch.allclose(speak(prompt, True), speak(prompt, False))
    assert torch.equal(speak(None, True), speak(None, False))
    assert "anchor_prompt" in SLED.CONTROLS and "anchor_prompt" in KALLE.CONTROLS
    # the control reaches generation through the TTS role
    from models.roles import TTSRequest

    def request(anchor):
        return TTSRequest("one two", prompt=prompt, prompt_text="a prompt transcript", seed=0,
                          controls={"anchor_prompt": anchor, "stop_threshold": 2.0})

    ids, symbols = model.request_text(request(1.0))
    direct = model.generate(ids, prompt=prompt, seed=0, stop_threshold=2.0, prompt_symbols=symbols, anchor_prompt=True)
    assert torch.equal(torch.stack(list(model.frames(request(1.0)))), torch.stack(list(direct)))
    assert not torch.equal(torch.stack(list(model.frames(request(1.0)))), torch.stack(list(model.frames(request(0.0)))))


def test_anchored_training_pairs_place_the_prompt_text_as_generation_does():
    from models.training.latents import voice_sequences

    model = tiny(fitted={"text_rate": 1.3})
    texts = [torch.tensor(tokens(model, t)) for t in ("a prompt transcript", "one two", "three")]
    frames = [torch.randn(n, 16) for n in (40, 9, 7)]
    batch = {"ids": ["a", "b", "c"], "speaker": torch.tensor([0, 0, 1]),
             "text": torch.nn.utils.rnn.pad_sequence(texts, batch_first=True),
             "text_lengths": torch.tensor([len(t) for t in texts]),
             "features": torch.nn.utils.rnn.pad_sequence([f for f in frames], batch_first=True).transpose(1, 2),
             "feature_lengths": torch.tensor([len(f) for f in frames])}
    space = model.frontend.symbols.encode(" ")
    out_texts, out_frames, anchors = voice_sequences(batch, 1.0, 0.0, model.null_id, space, step=0)
    assert anchors[2] is None and torch.equal(out_texts[2], texts[2])  # no other utterance of its voice
    assert anchors[1] == (len(texts[0]) + len(space), 40) and len(out_frames[1]) == 49  # the pair [a, b]
    assert anchors[0] == (len(texts[1]) + len(space), 9)
    # a TTS request with that prompt gives generation the same ids and the same anchor
    from models.roles import TTSRequest

    request = TTSRequest("one two", prompt=out_frames[0][:40, :8], prompt_text="a prompt transcript")
    assert model.request_text(request) == (out_texts[1].tolist(), anchors[1][0])
    # the layout a training pair is embedded with is the one generation gives a prompt of that length
    seq = model.embed(out_texts[1:2], [out_frames[1][:, :8]], anchors=anchors[1:2])
    kinds = layout(len(out_texts[1]), 49, model.interleave)
    assert seq["positions"][0].tolist() == pytest.approx(positions(kinds, 1.3, anchor=(anchors[1])))
    assert seq["positions"][0].tolist() != pytest.approx(positions(kinds, 1.3))
    with pytest.raises(ValueError, match="aligned_positions"):
        SLEDConfig.from_dict({**TINY["model"], "anchored_pairs": True, "aligned_positions": False}).check("x")
    # a model trained so generates anchored unless asked not to; the class default stays off
    anchored = tiny(fitted={"text_rate": 1.3}, anchored_pairs=True, aligned_positions=True)
    assert anchored.CONTROLS["anchor_prompt"].default == 1 and SLED.CONTROLS["anchor_prompt"].default == 0
    assert model.CONTROLS["anchor_prompt"].default == 0


def test_the_length_cap_counts_only_the_new_text():
    """A run whose stop head never fires ends after 20 + frames_per_phoneme x the new text's symbols."""
    model = tiny()
    prompt_ids, new_ids = tokens(model, "a much longer prompt transcript here"), tokens(model, "one two")
    frames = list(model.generate(prompt_ids + new_ids, prompt=torch.randn(4, 8), seed=0, stop_threshold=2.0,
                                 prompt_symbols=len(prompt_ids)))
    assert len(frames) == int(20 + model.config.frames_per_phoneme * len(new_ids))


def test_a_tiny_model_overfits_one_utterance():
    torch.manual_seed(0)
    model = SLED(SLEDConfig.from_dict({**TINY["model"], "frontend": None, "text_dropout": 0.0}))
    ids = torch.tensor(tokens(model, "a short sentence"))
    target = torch.cumsum(torch.randn(24, 8) * 0.3, dim=0)  # a smooth trajectory
    model.latent_mean.copy_(target.mean(0))
    model.latent_std.copy_(target.std(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        out = model.loss([ids], [target])
        loss = out["generative"] + out["stop"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(out["generative"].item())
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])
    model.eval()
    frames = torch.stack(list(model.generate(ids.tolist(), cfg=None, seed=0, max_frames=40)))
    assert abs(len(frames) - 24) <= 2  # the stop head learned where the utterance ends
    n = min(len(frames), 24)
    error = (model.normalize(frames[:n]) - model.normalize(target[:n])).norm(dim=-1).mean()
    assert error < 0.5 * model.normalize(target).norm(dim=-1).mean()


@pytest.mark.parametrize("name", ["hifigan", "vocos"])
def test_streamed_chunks_join_into_the_offline_decoding(name):
    from models.vocoder import use_vocoder

    torch.manual_seed(0)
    codec = FlowVAE(FlowVAEConfig(latent_dim=8, channels=16, dilations=(1, 3), flow_layers=2, flow_hidden=16,
                                  flow_kernel=3)).eval()
    z = torch.randn(40, 8)
    with use_vocoder(name):  # the shipped Vocos: its receptive field is twice HiFi-GAN's
        offline = codec.decode_wav(z)
        decoder = codec.streaming_decoder()
    assert decoder.vocoder.name == name and decoder.mel_lookahead == decoder.vocoder.generator.receptive_frames
    lag = decoder.lag
    chunks = [decoder.push(list(z[: lag - 1]))]
    assert len(chunks[0]) == 0  # nothing is final before the lookahead is generated ...
    chunks.append(decoder.push([z[lag - 1]]))
    assert len(chunks[1]) > 0  # ... and something is once it is
    chunks += [decoder.push(list(z[lag:lag + 7])), decoder.push(list(z[lag + 7:])), decoder.flush()]
    streamed = np.concatenate(chunks)
    assert len(streamed) == len(offline)
    assert np.sqrt(np.mean((streamed - offline) ** 2)) < 0.01 * np.sqrt(np.mean(offline ** 2))
    jumps = np.abs(np.diff(streamed))
    assert jumps.max() < 1.5 * np.abs(np.diff(offline)).max()  # no clicks at the joins


def test_training_exports_latent_statistics_and_the_frontend(sled_run):
    _, config, card = registry.load_checkpoint(sled_run, "cpu")
    assert len(config["fitted"]["latent_mean"]) == 8 and min(config["fitted"]["latent_std"]) > 0
    assert not {"latent_mean", "latent_std", "text_rate"} & set(config)  # statistics apart from hyperparameters
    assert config["frontend"]["mode"] in ("phoneme", "char") and card["steps"] == 4


def test_validate_only_measures_a_checkpoint_without_training(sled_run, mini, tmp_path, capsys):
    import yaml

    config = yaml.safe_load((sled_run.parent / "config.yaml").read_text())
    config.pop("task")
    config["train"]["init_from"] = str(sled_run)
    path = tmp_path / "validate.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "validated"
    assert main(["train", "sled", "--config", str(path), "--data", str(mini[0]), "--out", str(out),
                 "--validate-only"]) == 0
    rows = list(csv.DictReader(open(out / "val.csv")))
    assert len(rows) == 1 and int(rows[0]["step"]) == 0 and not (out / "checkpoints").exists()
    # the loss gap to the null text is measured (tiny and untrained: it may have either sign)
    assert np.isfinite(float(rows[0]["val_text_gain"])) and float(rows[0]["val_text_gain"]) != 0.0
    batches = list(csv.DictReader(open(out / "val_batches.csv")))  # batch by batch, for paired comparisons
    assert [int(b["batch"]) for b in batches] == list(range(len(batches))) and batches[0]["split"] == "valid"
    assert np.isclose(np.mean([float(b["text_gain"]) for b in batches]), float(rows[0]["val_text_gain"]))
    held = tmp_path / "held"
    assert main(["train", "sled", "--config", str(path), "--data", str(mini[0]), "--out", str(held),
                 "--validate-only", "--split", "heldout", "--val-batches", "1"]) == 0
    batches = list(csv.DictReader(open(held / "val_batches.csv")))
    assert len(batches) == 1 and batches[0]["split"] == "heldout"
    assert main(["train", "sled", "--config", str(path), "--data", str(mini[0]), "--out", str(tmp_path / "x"),
                 "--split", "heldout"]) == 2
    assert "--split and --val-batches go with --validate-only" in capsys.readouterr().err
    config["train"].pop("init_from")
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "sled", "--config", str(path), "--data", str(mini[0]), "--out", str(tmp_path / "none"),
                 "--validate-only"]) != 0
    assert "--validate-only needs weights" in capsys.readouterr().err


def test_pipeline_streaming_gives_the_offline_frames_and_audio(sled_run):
    from models import pipelines

    wav, info = pipelines.tts("Hello there. Good day.", model=str(sled_run), seed=5, cfg=2.0)
    chunks, stream_info = pipelines.tts("Hello there. Good day.", model=str(sled_run), seed=5, cfg=2.0,
                                        stream=True, chunk_frames=(3, 7))
    streamed = np.concatenate(list(chunks))
    assert info["seed"] == 5 and info["sentences"] == 2
    assert stream_info["frames"] == info["frames"] and len(streamed) == len(wav)
    assert np.sqrt(np.mean((streamed - wav) ** 2)) < 0.1 * np.sqrt(np.mean(wav ** 2)) + 1e-6
    assert 0 < stream_info["first_chunk_s"] <= stream_info["wall_seconds"]


def test_pipeline_refuses_bad_input(sled_run, arctic_wav):
    from models import pipelines
    from models.text import TextError

    with pytest.raises(TextError, match="empty"):
        pipelines.tts("  ", model=str(sled_run))
    with pytest.raises(TextError, match="limit is 10"):
        pipelines.tts("a" * 11, model=str(sled_run), max_chars=10)
    with pytest.raises(ValueError, match="transcript"):
        pipelines.tts("hi", model=str(sled_run), ref_wav=arctic_wav, ref_sr=22050)
    with pytest.raises(ValueError, match="not a TTS model"):
        pipelines.tts("hi", model=str(sled_run.parents[1] / "vae" / "export"))
    for bad, match in (({"cfg": float("nan")}, "guidance"), ({"cfg": 0.0}, "guidance"), ({"cfg": 1e6}, "guidance"),
                       ({"seed": 2**70}, "seed"), ({"seed": -1}, "seed"),
                       ({"stop_threshold": 0.0}, "stop_threshold must be between"),
                       ({"stop_threshold": 1.0}, "stop_threshold must be between"),
                       ({"temperature": 1.0}, "has no setting 'temperature'")):
        with pytest.raises(ValueError, match=match):
            pipelines.tts("hi", model=str(sled_run), **bad)
    wav, info = pipelines.tts("hi", model=str(sled_run), ref_wav=arctic_wav, ref_sr=22050,
                              transcribe=lambda wav: "and you always want to see it", seed=0)
    assert info["ref_text"] == "and you always want to see it" and len(wav) > 0


def test_cli_tts_end_to_end(sled_run, tmp_path, arctic_path, capsys):
    out = tmp_path / "out.wav"
    assert main(["tts", "--model", str(sled_run), "--text", "Hello there.", "--seed", "0", "--cfg", "1.5",
                 "--out", str(out)]) == 0
    assert out.is_file() and '"seed": 0' in capsys.readouterr().out
    streamed = tmp_path / "stream.wav"
    assert main(["tts", "--model", str(sled_run), "--text", "Hello there.", "--seed", "0", "--cfg", "1.5",
                 "--stream", "--ref", str(arctic_path), "--ref-text", "and you always want to see it",
                 "--out", str(streamed)]) == 0
    assert streamed.is_file()
    assert main(["tts", "--model", str(sled_run), "--text", "", "--out", str(tmp_path / "new.wav")]) == 2
    assert "text is empty" in capsys.readouterr().err
    before = out.read_bytes()
    assert main(["tts", "--model", str(sled_run), "--text", "Hi.", "--seed", "1", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before  # nothing replaced
    assert main(["tts", "--model", str(sled_run), "--text", "Hi.", "--seed", "1", "--out", str(out),
                 "--overwrite"]) == 0
    assert out.read_bytes() != before


def test_cli_batch_synthesis_records_settings_and_resumes(sled_run, tmp_path, capsys):
    import json

    lines = tmp_path / "lines.txt"
    lines.write_text("Hello there.\n\nOne two three.\n")
    out = tmp_path / "batch"
    command = ["tts", "--model", str(sled_run), "--file", str(lines), "--out-dir", str(out), "--seed", "5",
               "--stop-threshold", "0.9"]
    assert main(command) == 0
    assert json.loads(capsys.readouterr().out)["synthesized"] == 2
    records = [json.loads(line) for line in (out / "synthesis.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["0001", "0002"] and [r["seed"] for r in records] == [5, 6]
    assert records[0]["stop_threshold"] == 0.9 and records[0]["cfg"] == 2.0
    kept = (out / "0001.wav").stat().st_mtime_ns
    (out / "0002.wav").unlink()  # as if the run had stopped before its last line
    assert main(command) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["synthesized"], summary["skipped"]) == (1, 1)
    assert (out / "0002.wav").is_file() and (out / "0001.wav").stat().st_mtime_ns == kept
    assert main(command[:-2] + ["--temperature", "0.5"]) == 2  # another model's setting
    assert "unknown option --temperature" in capsys.readouterr().err
    assert main(["tts", "--model", str(sled_run), "--file", str(lines), "--out", str(tmp_path / "x.wav")]) == 2
    drawn = tmp_path / "drawn"  # without --seed: the drawn base seed is kept, and a resumed batch goes on with it
    assert main(command[:5] + ["--out-dir", str(drawn)]) == 0
    base = json.loads(capsys.readouterr().out)["seed"]
    (drawn / "0002.wav").unlink()
    assert main(command[:5] + ["--out-dir", str(drawn)]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == base
    records = [json.loads(line) for line in (drawn / "synthesis.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [base, base + 1, base + 1]


def test_a_tts_checkpoint_is_an_eval_system_with_options(sled_run, mini, tmp_path, monkeypatch):
    from evaluation.results import read_results
    from evaluation.runner import RunConfig, run_eval
    from evaluation.systems import parse_system, read_items

    system = parse_system(f"s={sled_run}:cfg=1.5:seed=3")
    assert (system.kind, system.generated, dict(system.options)) == ("tts", True, {"cfg": 1.5, "seed": 3})
    for bad in (":cfg=x", ":temperature=1", ":cfg"):
        with pytest.raises(ValueError, match="system"):
            parse_system(f"s={sled_run}{bad}")
    manifest = mini[0] / "eval" / "tts_seen.lst"
    item = read_items(manifest)[0]
    assert item.prompt_text and item.enrollment.is_file()
    speak = system.generator("cpu")
    first, again = speak(item), speak(item)
    assert first[1] == 22050 and np.array_equal(first[0], again[0])  # the item's seed is fixed
    run_eval(RunConfig(manifest=str(manifest), systems=[system], metrics=["sisdr"], out=str(tmp_path / "run"),
                       limit=2))
    rows = read_results(tmp_path / "run")
    assert sum(r["metric"] == "rtf" and r["values"] is not None for r in rows) == 2
    assert len(list((tmp_path / "run" / "audio" / "s").glob("*.wav"))) == 2
    # a model that gives no audio: each item is a recorded failure and the run still ends;
    # WER counts the missing output as every word deleted, a metric without that meaning is NaN
    from models import pipelines

    def mute(*args, **kwargs):
        raise ValueError("stopped before its first frame: no audio was generated")

    monkeypatch.setattr(pipelines, "tts", mute)
    run_eval(RunConfig(manifest=str(manifest), systems=[parse_system(f"mute={sled_run}")],
                       metrics=["sisdr", "wer"], out=str(tmp_path / "mute"), limit=2))
    rows = read_results(tmp_path / "mute")
    rtf = [r for r in rows if r["metric"] == "rtf"]
    assert len(rtf) == 2 and all(r["values"] is None and "first frame" in r["reason"] for r in rtf)
    assert all(r["values"] is None for r in rows if r["metric"] == "sisdr")
    wer = [r["values"] for r in rows if r["metric"] == "wer"]
    assert len(wer) == 2 and all(v["wer"] == 1.0 and v["deletions"] == v["reference_words"] > 0 for v in wer)


def test_bench_tts_reports_speed_and_first_chunk(sled_run):
    from evaluation.bench import bench_tts

    result = bench_tts(str(sled_run), ("Hello there.", "Good night."), chunk_frames=(3, 5))
    assert result["rtf"] > 0 and result["stream_rtf"] > 0 and result["frames"] > 0
    assert len(result["rtf_per_text"]) == 2 and 0 < result["first_chunk_mean_s"] <= result["first_chunk_s"]
    assert result["hardware"]["cpu_threads"] >= 1
    flops = result["flops"]["per_audio_second"]
    assert flops["generator"] > 0 and flops["decoding"] > 0
    assert flops["total"] == pytest.approx(flops["generator"] + flops["decoding"])


@pytest.mark.slow
@pytest.mark.parametrize("model, seeds", [("sled", range(4)), ("sled_stream", range(1))])
def test_the_shipped_models_speak_after_the_shipped_reference(model, seeds, arctic_wav):
    """The studio's example: the CMU ARCTIC clip as the voice. Its stop head used to fire at once
    (no audio); generation now runs at least min_frames_per_phoneme x the text's symbols."""
    from models import pipelines
    from studio.tabs.synthesize import EXAMPLE_REFERENCE_TEXT

    for seed in seeds:
        wav, info = pipelines.tts("A plea for funds seems to come again.", model=model, ref_wav=arctic_wav,
                                  ref_sr=22050, ref_text=EXAMPLE_REFERENCE_TEXT, seed=seed)
        assert info["frames"] >= 15 and len(wav) / 22050 > 0.6 and np.abs(wav).max() > 0.01


def test_fitted_statistics_sit_apart_and_old_checkpoints_load_unchanged(tmp_path):
    """The shipped checkpoints keep their statistics at the top level of config.json (written before
    `fitted` existed); they load into the same `fitted` section a new checkpoint writes."""
    import json

    legacy = json.loads((registry.resolve("sled") / "config.json").read_text())
    assert "latent_mean" in legacy and "fitted" not in legacy
    old = SLEDConfig.from_dict(legacy)
    assert old.fitted.latent_mean == legacy["latent_mean"] and old.fitted.text_rate == legacy["text_rate"]
    assert SLEDConfig.from_dict(old.to_dict()) == old  # the new layout round-trips
    assert "latent_mean" not in old.to_dict() and old.to_dict()["fitted"]["text_rate"] == legacy["text_rate"]
    with pytest.raises(ValueError, match="fitted: unknown setting 'mean'"):
        SLEDConfig.from_dict({"fitted": {"mean": [0.0]}})
    yaml_file = tmp_path / "x.yaml"
    yaml_file.write_text("model:\n  model: sled\n  fitted:\n    text_rate: 1.0\n")
    with pytest.raises(ValueError, match="x.yaml: model: 'fitted' holds statistics the training recipe measures"):
        load_config(yaml_file)
    yaml_file.write_text("model:\n  model: sled\n  text_rate: 1.0\n")
    with pytest.raises(ValueError, match="unknown setting 'text_rate'"):
        load_config(yaml_file)
