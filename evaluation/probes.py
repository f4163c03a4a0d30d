"""Probes of what a token codec's tokens hold, trained on frozen tokens with one recipe for every codec
compared (same utterances, steps and seeds), and scored on held-out utterances with bootstrap intervals.

    phonemes   semantic richness (ALMTokenizer's claim): a small CTC phoneme recognizer reads the frozen
               layer-1 codewords and is scored by phoneme error rate (PER) on the validation split
    tokens     how predictable the upper layers are (the AR loss's aim): a small causal transformer predicts
               layer k's token at each frame from the lower layers' tokens up to that frame and layer k's
               before it, scored in bits per token and accuracy, beside the bits of the layer's token
               frequencies alone (the no-context baseline) and the difference: what the context explains

`speech-studio probe phonemes|tokens --codec A --codec B --corpus DIR --window W --out JSON`.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from evaluation.report import bootstrap_ci
from models import registry
from models.data.dataset import MEL, SpeechDataset
from models.modules import Transformer
from models.roles import TOKEN_CODEC
from models.text import IPA, LETTERS

PHONES = sorted(set(IPA + LETTERS) - set("ˈˌ"))  # stress marks are not phones
UPSAMPLE = 4  # probe frames per token: CTC needs more frames than phonemes, and tokens come at ~11 Hz


def phone_ids(phonemes: str) -> list[int]:
    """An espeak phoneme string -> probe targets 1.. (0 is the CTC blank); spaces, punctuation, stress dropped."""
    return [PHONES.index(c) + 1 for c in phonemes if c in PHONES]


def edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def codec_tokens(codec: str, corpus: str, split: str, limit: int, window: int | None, seed: int,
                 log: Callable[[str], None] = print) -> list[dict]:
    """Tokens (layers, N) of up to `limit` utterances of a corpus split (a seeded sample; the same rows for
    every codec), with their phoneme targets."""
    model, _, _ = registry.load_model(codec, "cpu")
    if registry.role_of(registry.checkpoint_kind(codec)) != TOKEN_CODEC:
        raise ValueError(f"{codec} is not a token codec")
    data = SpeechDataset(f"{corpus}/manifest.jsonl", (split,), feature=MEL, cache_dir=f"{corpus}/cache",
                         max_seconds=None)
    rows = [r for r in data.rows if r.get("phonemes")]
    random.Random(seed).shuffle(rows)
    rows = rows[:limit]
    start = time.perf_counter()
    out = []
    for row in rows:
        tokens = model.encode_mel(data.features(row), window).cpu()
        out.append({"id": row["id"], "tokens": tokens, "phones": phone_ids(row["phonemes"])})
    log(f"{codec}: {len(out)} {split} utterances encoded in {time.perf_counter() - start:.0f} s")
    return out


class PhonemeProbe(nn.Module):
    """Frozen codewords -> linear -> x4 upsampling -> convolutions -> BiGRU -> phone logits (CTC)."""

    def __init__(self, codewords: torch.Tensor, hidden: int = 128):
        super().__init__()
        self.codewords = nn.Embedding.from_pretrained(codewords, freeze=True)
        self.inp = nn.Linear(codewords.shape[1], hidden)
        self.conv = nn.Sequential(nn.Conv1d(hidden, hidden, 5, padding=2), nn.GELU(),
                                  nn.Conv1d(hidden, hidden, 5, padding=2), nn.GELU())
        self.rnn = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, len(PHONES) + 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.inp(self.codewords(ids)).repeat_interleave(UPSAMPLE, dim=1)  # (batch, N x 4, hidden)
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.out(self.rnn(x)[0])


def _pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return nn.utils.rnn.pad_sequence(seqs, batch_first=True), torch.tensor([len(s) for s in seqs])


def phoneme_probe(train: list[dict], test: list[dict], codewords: torch.Tensor, steps: int, seed: int,
                  batch: int = 16) -> dict:
    """Train the CTC probe on layer-1 tokens; PER per held-out utterance (greedy decoding)."""
    torch.manual_seed(seed)
    probe = PhonemeProbe(codewords)
    optimizer = torch.optim.AdamW([p for p in probe.parameters() if p.requires_grad], 2e-3)
    rng = random.Random(seed)
    usable = [u for u in train if len(u["phones"]) <= UPSAMPLE * u["tokens"].shape[1]]
    losses = []
    for _ in range(steps):
        chosen = rng.sample(usable, min(batch, len(usable)))
        ids, lengths = _pad([u["tokens"][0] for u in chosen])
        targets = torch.cat([torch.tensor(u["phones"]) for u in chosen])
        log_probs = probe(ids).log_softmax(-1).transpose(0, 1)  # (frames, batch, classes)
        loss = F.ctc_loss(log_probs, targets, lengths * UPSAMPLE, torch.tensor([len(u["phones"]) for u in chosen]),
                          zero_infinity=True)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    probe.eval()
    per = {}
    with torch.no_grad():
        for u in test:
            best = probe(u["tokens"][0][None])[0].argmax(-1).tolist()
            hypothesis = [p for i, p in enumerate(best) if p != 0 and (i == 0 or p != best[i - 1])]
            per[u["id"]] = edit_distance(u["phones"], hypothesis) / max(1, len(u["phones"]))
    return {"per": per, "final_train_ctc": float(np.mean(losses[-50:]))}


class TokenLM(nn.Module):
    """Layer k's token at frame n from layers 1..k-1 at frames <= n and layer k at frames < n."""

    def __init__(self, layer: int, size: int, dim: int = 128, layers: int = 2):
        super().__init__()
        self.layer = layer
        self.embeddings = nn.ModuleList(nn.Embedding(size + 1, dim) for _ in range(layer + 1))  # +1: a start id
        self.transformer = Transformer(dim, layers, heads=4, causal=True)
        self.out = nn.Linear(dim, size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, layers, N) -> logits (batch, N, size) for layer `self.layer` (0-based)."""
        k = self.layer
        start = torch.full_like(tokens[:, k, :1], self.out.out_features)
        previous = torch.cat([start, tokens[:, k, :-1]], dim=1)
        x = self.embeddings[k](previous) + sum(self.embeddings[i](tokens[:, i]) for i in range(k))
        return self.out(self.transformer(x))


def token_probe(train: list[dict], test: list[dict], layer: int, size: int, steps: int, seed: int,
                batch: int = 16) -> dict:
    """Train the token LM for one layer (0-based); bits per token per held-out utterance, and accuracy."""
    torch.manual_seed(seed)
    model = TokenLM(layer, size)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    rng = random.Random(seed)
    for _ in range(steps):
        chosen = rng.sample(train, min(batch, len(train)))
        length = min(u["tokens"].shape[1] for u in chosen)  # crops of a common length: no padding to mask
        crops = []
        for u in chosen:
            offset = rng.randint(0, u["tokens"].shape[1] - length)
            crops.append(u["tokens"][:, offset:offset + length])
        tokens = torch.stack(crops)
        loss = F.cross_entropy(model(tokens).transpose(1, 2), tokens[:, layer])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    bits, accuracy = {}, {}
    with torch.no_grad():
        for u in test:
            logits = model(u["tokens"][None])[0]
            target = u["tokens"][layer]
            bits[u["id"]] = float(F.cross_entropy(logits, target)) / math.log(2)
            accuracy[u["id"]] = float((logits.argmax(-1) == target).float().mean())
    return {"bits": bits, "accuracy": accuracy}


def unigram_bits(train: list[dict], test: list[dict], layer: int, size: int) -> dict[str, float]:
    """The no-context baseline: bits per token of a layer's held-out tokens under its training-token frequencies
    (add-one smoothed), so that a layer which merely uses fewer codewords does not pass for a more predictable one."""
    counts = torch.bincount(torch.cat([u["tokens"][layer] for u in train]), minlength=size).double() + 1
    log_p = (counts / counts.sum()).log2()
    return {u["id"]: float(-log_p[u["tokens"][layer]].mean()) for u in test}


def _summary(values: dict[str, float], seed: int) -> dict:
    array = np.array(list(values.values()))
    low, high = bootstrap_ci(array, seed)
    return {"mean": float(array.mean()), "ci_low": low, "ci_high": high, "n": len(array)}


def _paired(a: dict[str, float], b: dict[str, float], seed: int) -> dict:
    keys = sorted(a.keys() & b.keys())
    diff = np.array([a[k] - b[k] for k in keys])
    low, high = bootstrap_ci(diff, seed)
    return {"mean": float(diff.mean()), "ci_low": low, "ci_high": high, "n": len(keys)}


def run_probe(kind: str, codecs: dict[str, str], corpus: str, window: int | None = None, train_items: int = 2000,
              test_items: int = 300, steps: int = 1500, seed: int = 0, log: Callable[[str], None] = print) -> dict:
    """One probe (`phonemes` or `tokens`) on every codec (label -> checkpoint), same data and seeds."""
    if kind not in ("phonemes", "tokens"):
        raise ValueError(f"probe must be phonemes or tokens, not {kind!r}")
    start = time.perf_counter()
    result = {"probe": kind, "corpus": corpus, "window": window, "train_items": train_items,
              "test_items": test_items, "steps": steps, "seed": seed, "codecs": {}, "paired": {}}
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for label, codec in codecs.items():
        model, _, _ = registry.load_model(codec, "cpu")
        train = codec_tokens(codec, corpus, "train", train_items, window, seed, log)
        test = codec_tokens(codec, corpus, "valid", test_items, window, seed, log)
        entry = {"checkpoint": codec, "bitrate": model.bitrate_at(window)}
        if kind == "phonemes":
            out = phoneme_probe(train, test, model.rvq.codebooks[0].detach().cpu(), steps, seed)
            scores[label] = {"per": out["per"]}
            entry.update(per=_summary(out["per"], seed), final_train_ctc=out["final_train_ctc"])
        else:
            scores[label] = {}
            for layer in range(1, model.num_codebooks):
                out = token_probe(train, test, layer, model.codebook_size, steps, seed)
                unigram = unigram_bits(train, test, layer, model.codebook_size)
                gain = {k: unigram[k] - out["bits"][k] for k in out["bits"]}  # what the context explains
                name = f"layer{layer + 1}"
                scores[label].update({f"{name}_bits": out["bits"], f"{name}_context_gain_bits": gain})
                entry.update({f"{name}_bits": _summary(out["bits"], seed),
                              f"{name}_unigram_bits": _summary(unigram, seed),
                              f"{name}_context_gain_bits": _summary(gain, seed),
                              f"{name}_accuracy": _summary(out["accuracy"], seed)})
        result["codecs"][label] = entry
        log(f"{label}: " + ", ".join(f"{k} {v['mean']:.3f}" for k, v in entry.items() if isinstance(v, dict)))
    labels = list(codecs)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            for metric in scores[a]:
                result["paired"][f"{metric}: {a} - {b}"] = _paired(scores[a][metric], scores[b][metric], seed)
    result["wall_time_s"] = round(time.perf_counter() - start, 1)
    return result
