"""The masked generative core (models/masked.py) and LoRA (models/modules.py), shared by every Metis stage."""

import math

import pytest
import torch

from models.masked import (
    MASK_FLOOR,
    MaskedTransformer,
    decode_layers,
    guide,
    mask_schedule,
    masked_count,
    masked_cross_entropy,
    masked_decode,
    training_mask,
)
from models.modules import LoRALinear, add_lora, merge_lora

V = 12  # vocabulary; the mask id is V


def table(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(length, V, generator=torch.Generator().manual_seed(seed)) * 3


def fixed_logits(logits: torch.Tensor):
    """A 'model' whose logits ignore its input; it checks that masked positions hold the mask id."""
    def logits_fn(tokens, masked, t):
        assert (tokens[masked] == V).all() and (tokens[~masked] < V).all() and 0 < t <= 1
        return logits

    return logits_fn


def test_the_schedule_runs_from_all_masked_to_none():
    assert float(mask_schedule(1.0)) == pytest.approx(1.0) and float(mask_schedule(0.0)) == 0.0
    assert float(mask_schedule(0.5)) == pytest.approx(math.sin(math.pi / 4))
    assert masked_count(10, 0.0) == 0 and masked_count(10, 1.0) == 10 and masked_count(10, 0.01) == 1


def test_training_masks_follow_the_schedule_with_its_floor_and_keep_the_prompt():
    lengths = torch.tensor([40, 25, 3, 40])
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        masked, prompts, t = training_mask(lengths, 40, generator, prompt_probability=0.5)
        for i, n in enumerate(lengths.tolist()):
            free = n - int(prompts[i])
            ratio = max(MASK_FLOOR, float(mask_schedule(t[i])))
            assert int(masked[i].sum()) == max(1, math.ceil(ratio * free))
            assert not masked[i, : prompts[i]].any() and not masked[i, n:].any()  # prompt and padding stay
            assert prompts[i] <= 0.4 * n
    always, prompts, _ = training_mask(torch.tensor([50] * 8), 50, generator, prompt_probability=1.0)
    assert (prompts > 0).sum() >= 6  # a prefix is drawn for (nearly) every item
    fixed = torch.zeros(1, 10, dtype=torch.bool)
    fixed[0, 5:] = True
    masked, _, _ = training_mask(torch.tensor([10]), 10, generator, fixed=fixed)
    assert masked[0, :5].any() and not masked[0, 5:].any()  # a given condition is never a target


def test_cross_entropy_counts_masked_positions_only():
    logits, targets = torch.randn(2, 6, V), torch.randint(V, (2, 6))
    masked = torch.zeros(2, 6, dtype=torch.bool)
    masked[0, 1] = masked[1, 4] = True
    changed = logits.clone()
    changed[~masked] = torch.randn(int((~masked).sum()), V)  # what the unmasked positions predict is not scored
    assert masked_cross_entropy(logits, targets, masked) == masked_cross_entropy(changed, targets, masked)


@pytest.mark.parametrize("steps", [1, 4, 8, 25])
def test_decoding_masks_as_the_schedule_says_at_every_step(steps):
    length, prompt = 30, 6
    given = torch.randint(V, (length,))
    fixed = torch.arange(length) < prompt
    counts = []

    def seen(step, masked):
        assert not masked[:prompt].any()  # the prompt is never masked again
        counts.append(int(masked.sum()))

    out = masked_decode(fixed_logits(table(length)), given, fixed, V, steps, temperature=1.0,
                        generator=torch.Generator().manual_seed(1), on_step=seen)
    free = length - prompt
    assert counts == [masked_count(free, 1 - (s + 1) / steps) for s in range(steps)]
    assert torch.equal(out[:prompt], given[:prompt]) and (out < V).all()


def test_one_step_is_the_greedy_choice_and_decoded_tokens_stay():
    logits = table(20)
    out = masked_decode(fixed_logits(logits), torch.zeros(20, dtype=torch.long), torch.zeros(20, dtype=torch.bool),
                        V, steps=1, temperature=5.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, logits.argmax(-1))

    history = []

    def changing(tokens, masked, t):  # a model whose mind changes every step: decoded tokens must not follow
        history.append(tokens.clone())
        return table(20, seed=len(history))

    masked_decode(changing, torch.zeros(20, dtype=torch.long), torch.zeros(20, dtype=torch.bool), V, 6,
                  generator=torch.Generator().manual_seed(0))
    for before, after in zip(history, history[1:]):
        decoded = before < V
        assert torch.equal(after[decoded], before[decoded])


def test_the_same_seed_gives_the_same_tokens():
    def decode(seed):
        return masked_decode(fixed_logits(table(40)), torch.zeros(40, dtype=torch.long),
                             torch.zeros(40, dtype=torch.bool), V, 8, temperature=1.0, top_k=6,
                             generator=torch.Generator().manual_seed(seed))

    assert torch.equal(decode(5), decode(5)) and not torch.equal(decode(5), decode(6))


def test_top_k_keeps_sampling_among_the_k_best():
    logits = table(200)
    out = masked_decode(fixed_logits(logits), torch.zeros(200, dtype=torch.long), torch.zeros(200, dtype=torch.bool),
                        V, 4, temperature=10.0, top_k=2, generator=torch.Generator().manual_seed(0))
    best_two = logits.topk(2, dim=-1).indices
    assert (best_two == out[:, None]).any(-1).all()


def test_guidance_scale_zero_is_the_conditional_and_guided_states_keep_its_spread():
    c, u = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    assert torch.equal(guide(c, u, 0.0), c)
    g = guide(c, u, 2.5)
    raw = c + 2.5 * (c - u)
    assert not torch.allclose(g, c)
    expected = 0.75 * raw * c.std(dim=(-2, -1), keepdim=True) / raw.std(dim=(-2, -1), keepdim=True) + 0.25 * raw
    assert torch.allclose(g, expected, atol=1e-6)


def test_layered_decoding_given_all_layers_but_one_changes_only_that_layer():
    layers, length = 4, 15
    given = torch.randint(V, (layers, length))
    fixed = torch.ones(layers, length, dtype=torch.bool)
    fixed[2] = False  # only layer 2 is to be decoded
    calls = []

    def logits_fn(layer, tokens, masked, t):
        calls.append(layer)
        assert torch.equal(tokens[[0, 1, 3]], given[[0, 1, 3]])  # the other layers as given
        return table(length, seed=layer)

    out = decode_layers(logits_fn, given, fixed, V, steps=(5, 3, 2, 1))
    assert set(calls) == {2} and len(calls) == 2  # layer 2's step count
    assert torch.equal(out[[0, 1, 3]], given[[0, 1, 3]]) and (out[2] < V).all()


def test_the_transformer_reads_the_time_and_ignores_padding():
    torch.manual_seed(0)
    model = MaskedTransformer(16, 2, 2).eval()
    for p in model.parameters():  # the zero-initialized modulation would hide the time
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(1, 9, 16)
    with torch.no_grad():
        a, b = model(x, torch.tensor([0.2])), model(x, torch.tensor([0.9]))
        assert a.shape == (1, 9, 16) and not torch.allclose(a, b)
        padded = torch.cat([x, torch.randn(1, 4, 16)], dim=1)
        mask = torch.arange(13)[None] < 9
        assert torch.allclose(model(padded, torch.tensor([0.2]), mask)[:, :9], a, atol=1e-5)


def test_lora_merged_and_unmerged_give_the_same_outputs():
    torch.manual_seed(0)
    model = MaskedTransformer(16, 2, 2).eval()
    x, t = torch.randn(2, 5, 16), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        base = model(x, t)
    names = add_lora(model, rank=4, targets=("attn.qkv", "attn.out", "mlp.0", "mlp.2"))
    assert len(names) == 8 and isinstance(model.blocks[0].attn.qkv, LoRALinear)
    with torch.no_grad():
        assert torch.allclose(model(x, t), base)  # B = 0 at the start: the base model
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.normal_(std=0.1)  # as if trained
        adapted = model(x, t)
        assert not torch.allclose(adapted, base)
        merged = merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in merged.modules())
        assert torch.allclose(merged(x, t), adapted, atol=1e-5)
    assert set(merged.state_dict()) == set(MaskedTransformer(16, 2, 2).state_dict())  # loads strictly as the base
    with pytest.raises(ValueError, match="match no linear layer"):
        add_lora(model, 4, ("nothing",))


def test_a_base_checkpoint_loads_into_its_lora_model_by_the_same_names():
    base = MaskedTransformer(16, 1, 2)
    adapted = MaskedTransformer(16, 1, 2)
    add_lora(adapted, rank=2, targets=("attn.qkv",))
    missing, unexpected = adapted.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and set(missing) == {"blocks.0.attn.qkv.lora_a", "blocks.0.attn.qkv.lora_b"}
    x, t = torch.randn(1, 4, 16), torch.tensor([0.5])
    with torch.no_grad():
        assert torch.allclose(adapted(x, t), base(x, t), atol=1e-6)  # B = 0: the base model
