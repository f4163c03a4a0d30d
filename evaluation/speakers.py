"""How many distinct people a corpus holds, as a speaker model hears it.

Each speaker's identity is the mean GE2E embedding (the bench's SIM model) of up to N of its
test utterances. The threshold is the speaker-verification operating point of the corpus
itself: the equal-error-rate threshold over utterance pairs (same speaker against different
speakers). Two speakers are told apart when the cosine of their mean embeddings falls below
it; speakers that cannot be told apart, directly or through a chain, count once.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from evaluation.metrics.base import METRIC_RATE
from evaluation.metrics.speaker import load_ge2e
from models import audio
from models.data import manifest as mf
from models.files import write_text_atomic


def equal_error_threshold(same: np.ndarray, different: np.ndarray) -> tuple[float, float]:
    """(threshold, equal error rate) for scores where same-speaker pairs should score higher: the
    threshold among the observed scores where misses and false accepts are closest."""
    candidates = np.unique(np.concatenate([same, different]))
    miss = np.searchsorted(np.sort(same), candidates, side="left") / len(same)  # same < t
    false_accept = 1 - np.searchsorted(np.sort(different), candidates, side="left") / len(different)  # diff >= t
    best = int(np.argmin(np.abs(miss - false_accept)))
    return float(candidates[best]), float((miss[best] + false_accept[best]) / 2)


def components(names: list[str], linked: np.ndarray) -> list[list[str]]:
    """Groups of names joined by `linked` (a symmetric boolean matrix), directly or through a chain."""
    group = list(range(len(names)))

    def root(i: int) -> int:
        while group[i] != i:
            group[i] = group[group[i]]
            i = group[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(linked, 1))):
        group[root(int(i))] = root(int(j))
    found = defaultdict(list)
    for i, name in enumerate(names):
        found[root(i)].append(name)
    return sorted(found.values(), key=lambda g: (-len(g), g))


def distinct_speakers(corpus: str | Path, per_speaker: int = 8, device: str = "cpu", out: str | Path | None = None,
                      log=print) -> dict:
    corpus = Path(corpus)
    manifest = corpus / "manifest.jsonl"
    rows = [r for r in mf.read_jsonl(manifest) if r["split"] in ("test", "heldout")]
    by_speaker = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["id"]):
        if len(by_speaker[row["speaker"]]) < per_speaker:
            by_speaker[row["speaker"]].append(row)
    encoder = load_ge2e(device)
    embeddings, names = {}, sorted(by_speaker)
    for n, name in enumerate(names):
        waves = [audio.load_audio(mf.resolve_audio(manifest, r["path"]), METRIC_RATE, max_seconds=None)
                 for r in by_speaker[name]]
        embeddings[name] = np.stack([encoder.embed(w) for w in waves])
        if (n + 1) % 25 == 0:
            log(f"embedded {n + 1} / {len(names)} speakers")
    utterances = np.concatenate([embeddings[n] for n in names])
    owner = np.concatenate([[i] * len(embeddings[n]) for i, n in enumerate(names)])
    scores = utterances @ utterances.T
    upper = np.triu(np.ones_like(scores, dtype=bool), 1)
    same, different = scores[upper & (owner[:, None] == owner[None])], scores[upper & (owner[:, None] != owner[None])]
    threshold, eer = equal_error_threshold(same, different)
    centroids = np.stack([embeddings[n].mean(0) / np.linalg.norm(embeddings[n].mean(0)) for n in names])
    similarity = centroids @ centroids.T
    groups = components(names, similarity >= threshold)
    speaker_split = {r["speaker"]: r["split"] for r in rows}
    report = {
        "corpus": str(corpus), "speaker_model": "Resemblyzer GE2E", "utterances_per_speaker": per_speaker,
        "speakers": len(names), "distinct": len(groups),
        "distinct_heldout": sum(all(speaker_split[n] == "heldout" for n in g) for g in groups),
        "distinct_seen": sum(all(speaker_split[n] == "test" for n in g) for g in groups),
        "threshold": round(threshold, 4), "utterance_eer": round(eer, 4),
        "same_speaker_sim_mean": round(float(same.mean()), 4),
        "different_speaker_sim_mean": round(float(different.mean()), 4),
        "merged": [g for g in groups if len(g) > 1],
    }
    if out:
        write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    return report
