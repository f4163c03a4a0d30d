"""The token-codec probes (evaluation/probes.py) measure what they claim: a phoneme probe reads phonemes
that tokens carry and not ones they lack; a token LM predicts a layer that the lower ones determine."""

import math
import random

import pytest
import torch

from evaluation.probes import PHONES, edit_distance, phone_ids, phoneme_probe, token_probe, unigram_bits


def test_phone_targets_and_edit_distance():
    assert phone_ids("ðˈɪs, ɪz.") == [PHONES.index(c) + 1 for c in "ðɪsɪz"]
    assert edit_distance([1, 2, 3], [1, 3]) == 1 and edit_distance([], [4, 4]) == 2 and edit_distance([5], [5]) == 0


def _utterances(n: int, informative: bool, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        phones = [rng.randint(1, 6) for _ in range(rng.randint(4, 9))]
        ids = [p if informative else 0 for p in phones for _ in range(2)]  # two tokens per phone
        out.append({"id": f"u{i}", "phones": phones, "tokens": torch.tensor([ids, ids, ids])})
    return out


@pytest.mark.parametrize("informative", [True, False])
def test_the_phoneme_probe_reads_phonemes_only_when_the_tokens_carry_them(informative):
    codewords = torch.randn(8, 16)
    out = phoneme_probe(_utterances(200, informative, 0), _utterances(40, informative, 1), codewords, steps=300,
                        seed=0)
    per = sum(out["per"].values()) / len(out["per"])
    assert (per < 0.25) if informative else (per > 0.6)


def test_the_token_lm_predicts_a_layer_the_lower_ones_determine():
    torch.manual_seed(0)

    def utterances(n, determined):
        items = []
        for i in range(n):
            first = torch.randint(0, 8, (30,))
            second = (first * 3) % 8 if determined else torch.randint(0, 8, (30,))
            items.append({"id": f"u{i}", "tokens": torch.stack([first, second, torch.randint(0, 8, (30,))])})
        return items

    determined = token_probe(utterances(100, True), utterances(20, True), layer=1, size=8, steps=300, seed=0)
    independent = token_probe(utterances(100, False), utterances(20, False), layer=1, size=8, steps=300, seed=0)
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    assert mean(determined["bits"]) < 0.3 and mean(determined["accuracy"]) > 0.9
    assert mean(independent["bits"]) > 0.8 * math.log2(8)  # nothing to learn: near uniform


def test_the_unigram_baseline_charges_each_token_its_training_frequency():
    train = [{"id": "a", "tokens": torch.tensor([[0, 0, 0, 1]])}]  # with add-one over 4 codewords: 4/8, 2/8, 1/8, 1/8
    test = [{"id": "t", "tokens": torch.tensor([[0, 1]])}, {"id": "u", "tokens": torch.tensor([[3, 3]])}]
    bits = unigram_bits(train, test, layer=0, size=4)
    assert bits["t"] == pytest.approx((1 + 2) / 2) and bits["u"] == pytest.approx(3.0)
