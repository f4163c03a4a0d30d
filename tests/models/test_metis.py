"""Metis (models/metis.py, models/metis_s2a.py) and its recipes: tiny models overfit one utterance, LoRA merges
at export, lengths follow the prompt's pace."""

import math

import torch

from models.masked import MASK_FLOOR
from models.metis import MetisConfig, MetisT2S
from models.metis_s2a import MetisS2A, MetisS2AConfig
from models.training.metis import MetisTask
from models.training.metis_s2a import MetisS2ATask

TINY = {"dim": 32, "layers": 2, "heads": 2, "ff_mult": 2}


def t2s_config(**extra) -> dict:
    return {**TINY, "condition_dropout": 0.0, "prompt_probability": 0.3,
            "fitted": {"vocabulary": 16, "token_rate": 25.0, "tokens_per_symbol": 2.0}, **extra}


def s2a_config(**extra) -> dict:
    return {**TINY, "condition_dropout": 0.0, "steps": [6, 3, 1],
            "fitted": {"codebooks": 3, "codebook_size": 16, "acoustic_rate": 20.0, "semantic_vocabulary": 16,
                       "semantic_rate": 25.0}, **extra}


def fit(recipe, model, batch, steps: int, lr: float = 3e-3) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        loss, logs, _ = recipe.losses(model, batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(logs["ce"])
    return losses


def test_a_tiny_t2s_overfits_one_utterance_and_decodes_it_greedily():
    torch.manual_seed(0)
    recipe = MetisTask(t2s_config())
    model = recipe.build()
    target = torch.randint(16, (24,))
    text = torch.randint(1, 20, (10,))
    batch = {"ids": ["a"], "features": target[None, None], "feature_lengths": torch.tensor([24]),
             "text": text[None], "text_lengths": torch.tensor([10])}
    losses = fit(recipe, model, batch, 300)
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    out = model.generate(text.tolist(), None, 24, cfg=0.0, seed=0, steps=8, temperature=0.0)
    assert (out == target).float().mean() >= 0.9
    prompt = model.generate(text.tolist(), target[:8], 16, cfg=0.0, seed=0, steps=8, temperature=0.0)
    assert (prompt == target[8:]).float().mean() >= 0.9  # continues a prompt it was given


def test_a_tiny_s2a_overfits_one_utterance_layer_by_layer():
    torch.manual_seed(0)
    recipe = MetisS2ATask(s2a_config(prompt_probability=0.3))
    model = recipe.build()
    tokens = torch.randint(16, (3, 20))
    semantic = torch.randint(16, (25,))  # 1 s at 25 Hz for 20 frames at 20 Hz
    batch = {"ids": ["a"], "features": tokens[None], "feature_lengths": torch.tensor([20]),
             "semantic": semantic[None, None], "semantic_lengths": torch.tensor([25])}
    losses = fit(recipe, model, batch, 400)
    assert losses[-1] < 0.1 * losses[0]
    model.eval()
    out = torch.from_numpy(model.generate_tokens(semantic.numpy(), None, 0, {"steps": 6, "temperature": 0.0}))
    assert out.shape == (3, 20) and (out == tokens).float().mean() >= 0.9
    from models.roles import AcousticPrompt

    # the first quarter second as the voice, the rest to speak: it continues the utterance it learned
    voice = AcousticPrompt(tokens[:, :5].numpy(), semantic[:6].numpy())
    rest = model.generate_tokens(semantic[6:].numpy(), voice, 0, {"steps": 6, "temperature": 0.0})
    assert rest.shape == (3, math.ceil(19 / 25 * 20))  # the speech alone (19 semantic tokens), not the prompt


def test_the_t2s_mask_keeps_its_floor():
    recipe = MetisTask(t2s_config(prompt_probability=0.0))
    model = recipe.build()
    seen = {}

    def spy(texts, tokens, t):
        seen["masked"] = sum(int((x == model.mask_id).sum()) for x in tokens)
        return MetisT2S.logits(model, texts, tokens, t)

    model.forward = spy
    batch = {"ids": ["a"], "features": torch.randint(16, (1, 1, 50)), "feature_lengths": torch.tensor([50]),
             "text": torch.randint(1, 20, (1, 5)), "text_lengths": torch.tensor([5])}
    for step in range(20):
        recipe.losses(model, batch, step)
        assert seen["masked"] >= MASK_FLOOR * 50


def test_lora_fine_tunes_export_merged_and_load_as_a_plain_model():
    from models.modules import LoRALinear

    torch.manual_seed(0)
    recipe = MetisTask(t2s_config(lora_rank=4))
    model = recipe.build()
    assert any(isinstance(m, LoRALinear) for m in model.modules())
    for module in model.modules():
        if isinstance(module, LoRALinear):
            torch.nn.init.normal_(module.lora_b, std=0.1)  # as if trained
    exported = recipe.exported(model)
    plain = MetisT2S(MetisConfig.from_dict(recipe.model_config))
    plain.load_state_dict(exported.state_dict(), strict=True)
    text, tokens, t = [torch.tensor([3, 4, 5])], [torch.randint(17, (12,))], torch.tensor([0.5])
    with torch.no_grad():
        assert torch.allclose(plain.eval().logits(text, tokens, t)[0], model.eval().logits(text, tokens, t)[0],
                              atol=1e-5)
    assert any(isinstance(m, LoRALinear) for m in model.modules())  # the training model keeps its LoRA


def test_the_target_length_follows_the_prompt_or_the_training_pace_or_the_duration():
    model = MetisT2S(MetisConfig.from_dict(t2s_config()))
    assert model.target_length(text_symbols=30, prompt_frames=50, prompt_symbols=25, duration=0.0) == 60
    assert model.target_length(30, 0, 0, 0.0) == 60  # fitted: 2 tokens per symbol
    assert model.target_length(30, 50, 25, 2.0) == 50  # 2 s at 25 Hz


def test_s2a_reads_the_semantic_token_of_each_acoustic_moment():
    model = MetisS2A(MetisS2AConfig.from_dict(s2a_config()))
    semantic = torch.arange(25)
    at_rate = model.semantic_at_acoustic_rate(semantic, 20)  # 20 Hz frames over 25 Hz tokens
    assert at_rate.tolist() == [int(j / 20 * 25) for j in range(20)]


def test_metis_speaks_through_the_tts_pipeline_with_a_reference_and_a_set_duration(acoustic_decoder_run, arctic_wav,
                                                                                    tmp_path):
    """An untrained tiny T2S over the tiny S2A: the pipeline's reference, transcript and controls reach it, the
    prompt's own frames are not spoken again, and `duration` sets the length."""
    from models import pipelines, registry
    from models.training import load_config
    from tests.conftest import REPO

    config = load_config(REPO / "models" / "configs" / "metis_tiny.yaml")["model"]
    config["acoustic_decoder"] = str(acoustic_decoder_run)
    torch.manual_seed(0)
    model = MetisT2S(MetisConfig.from_dict(config))
    card = {"data": "none (untrained)", "steps": 0, "wall_time_s": 0.0, "device": "cpu", "metrics": {}}
    folder = registry.save_checkpoint(model, {**config, "model": "metis"}, card, tmp_path / "metis")
    wav, info = pipelines.tts("Hello there.", model=str(folder), ref_wav=arctic_wav, ref_sr=22050,
                              ref_text="and you always want to see it in the superlative degree", seed=1,
                              duration=2.0, t2s_steps=4, s2a_steps=2)
    assert info["reference"] and info["duration"] == 2.0 and info["codec"] == "alm_tokenizer"
    assert abs(len(wav) / 22050 - 2.0) < 0.25  # the two seconds asked for, not the reference's four as well
    again, _ = pipelines.tts("Hello there.", model=str(folder), seed=1, duration=1.0, t2s_steps=4, s2a_steps=2)
    assert abs(len(again) / 22050 - 1.0) < 0.25  # no reference: a voice of its own


def test_a_tts_fine_tune_refuses_cropped_utterances():
    """Cropped tokens would be paired with the whole utterance's phonemes: the recipe says so instead."""
    import pytest

    recipe = MetisTask(t2s_config())
    model = recipe.build()
    batch = {"ids": ["a"], "features": torch.randint(16, (1, 1, 20)), "feature_lengths": torch.tensor([20]),
             "text": torch.randint(1, 20, (1, 5)), "text_lengths": torch.tensor([5]), "crop_starts": torch.tensor([3])}
    with pytest.raises(ValueError, match="segment_frames: null"):
        recipe.losses(model, batch, 0)


def test_an_s2a_over_the_first_layers_learns_and_generates_only_those():
    """`codebooks: 2` of a 3-layer codec: the recipe never reads the third layer, a prompt's third layer is
    ignored, and the output has two layers (the codec decodes them coarser); a count above the codec's is
    refused by name."""
    import pytest

    from models.roles import AcousticPrompt

    config = s2a_config(prompt_probability=0.0)
    config["fitted"]["codebooks"] = 2
    recipe = MetisS2ATask(config)
    model = recipe.build()
    tokens = torch.randint(16, (1, 3, 20))
    batch = {"ids": ["a"], "features": tokens, "feature_lengths": torch.tensor([20]),
             "semantic": torch.randint(16, (1, 1, 25)), "semantic_lengths": torch.tensor([25])}
    loss, _, _ = recipe.losses(model, batch, 0)
    beyond = {**batch, "features": torch.cat([tokens[:, :2], torch.full((1, 1, 20), 99)], 1)}  # 99: no such id
    assert torch.equal(recipe.losses(model, beyond, 0)[0], loss)
    model.eval()
    voice = AcousticPrompt(tokens[0, :, :5].numpy(), torch.randint(16, (6,)).numpy())
    assert model.generate_tokens(torch.randint(16, (10,)).numpy(), voice, 0, {"steps": 2}).shape == (2, 8)
    with pytest.raises(ValueError, match="codebooks must be 1..32"):
        MetisS2ATask({**s2a_config(), "codec": "latent_rvq", "codebooks": 40}).fit_to_stages()


def test_the_layer_draw_falls_linearly_or_by_the_configured_decay():
    linear = MetisS2ATask(s2a_config()).layer_weights()
    assert torch.allclose(linear, torch.tensor([3.0, 2.0, 1.0]) / 6)
    decayed = MetisS2ATask(s2a_config(layer_decay=0.5)).layer_weights()
    assert torch.allclose(decayed, torch.tensor([4.0, 2.0, 1.0]) / 7)


def test_the_pre_trained_t2s_ships_as_a_stage_not_in_the_tts_menus(tmp_path, monkeypatch):
    """An unconditional pre-training checkpoint (text: false) reads no text: it is not listed where TTS models
    are, and asked to speak it says why; a fine-tuned one is listed."""
    import pytest

    from models import pipelines, registry

    card = {"data": "none (untrained)", "steps": 0, "wall_time_s": 0.0, "device": "cpu", "metrics": {}}
    monkeypatch.setattr(registry, "CHECKPOINT_DIR", tmp_path)
    for name, text in (("pretrained", False), ("tts", True)):
        config = t2s_config(text=text)
        registry.save_checkpoint(MetisT2S(MetisConfig.from_dict(config)), {**config, "model": "metis"}, card,
                                 tmp_path / name)
    broken = t2s_config(text=False)
    registry.save_checkpoint(MetisT2S(MetisConfig.from_dict(broken)),
                             {**broken, "model": "metis", "prompt_fraction": [0.5, 0.2]}, card, tmp_path / "broken")
    assert pipelines.available_tts_models() == ["broken", "tts"]  # listed, so using it says what is wrong
    with pytest.raises(ValueError, match="unconditional pre-trained model"):
        pipelines.tts("Hello there.", model=str(tmp_path / "pretrained"), seed=1)
