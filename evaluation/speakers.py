"""How many distinct people a corpus holds, as a speaker model hears it.

Each speaker is N test utterances embedded by the bench's SIM model (GE2E). Speakers A and B
are told apart when a nearest-centroid test separates them: each utterance of either is closer
to its own speaker's centroid (left out of it) than to the other's, for at least `separation`
of their utterances. The count of distinct voices is the size of a set of speakers every two of
which are told apart (greedy, fewest confusions first: a lower bound on the largest such set).
The utterance-level equal error rate and its threshold are reported beside it.
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


def told_apart(embeddings: np.ndarray, separation: float = 0.9) -> np.ndarray:
    """(speakers, speakers) booleans from unit embeddings (speakers, n, dim), n >= 2 each."""
    sums = embeddings.sum(1)
    left_out = sums[:, None] - embeddings
    left_out /= np.linalg.norm(left_out, axis=-1, keepdims=True)
    own = (embeddings * left_out).sum(-1)  # (S, n): each utterance against its own speaker
    centroids = sums / np.linalg.norm(sums, axis=-1, keepdims=True)
    other = np.einsum("snd,td->snt", embeddings, centroids)  # (S, n, S): against every speaker
    correct = (own[:, :, None] > other).mean(1)  # (S, S): share of i's utterances nearer to i than to j
    accuracy = (correct + correct.T) / 2  # both directions, n utterances each
    apart = accuracy >= separation
    np.fill_diagonal(apart, True)
    return apart


def distinct_set(names: list[str], apart: np.ndarray) -> list[str]:
    """A set of names every two of which are told apart: greedy, fewest confusions first."""
    confusions = (~apart).sum(1)
    chosen: list[int] = []
    for i in sorted(range(len(names)), key=lambda i: (confusions[i], names[i])):
        if all(apart[i, j] for j in chosen):
            chosen.append(i)
    return sorted(names[i] for i in chosen)


def _embedder(encoder: str | None, device: str):
    """(name, rate, embed(wav) -> unit vector): the bench's GE2E, or a speaker-encoder checkpoint."""
    if encoder is None:
        model = load_ge2e(device)
        return "Resemblyzer GE2E", METRIC_RATE, model.embed
    from models import registry
    from models.roles import SPEAKER_ENCODER

    if registry.checkpoint_role(encoder) != SPEAKER_ENCODER:
        raise ValueError(f"{encoder} is not a speaker-encoder checkpoint")
    model, _, _ = registry.load_model(encoder, device)
    return f"speaker encoder {encoder}", model.sample_rate, model.embed_wav


def utterance_eer(embeddings: dict[str, np.ndarray], names: list[str]) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(threshold, EER, same-speaker scores, different-speaker scores) over every pair of the named
    speakers' utterances (cosine of unit embeddings)."""
    utterances = np.concatenate([embeddings[n] for n in names])
    owner = np.concatenate([[i] * len(embeddings[n]) for i, n in enumerate(names)])
    scores = utterances @ utterances.T
    upper = np.triu(np.ones_like(scores, dtype=bool), 1)
    same, different = scores[upper & (owner[:, None] == owner[None])], scores[upper & (owner[:, None] != owner[None])]
    threshold, eer = equal_error_threshold(same, different)
    return threshold, eer, same, different


def distinct_speakers(corpus: str | Path, per_speaker: int = 8, separation: float = 0.9, device: str = "cpu",
                      out: str | Path | None = None, log=print, encoder: str | None = None) -> dict:
    corpus = Path(corpus)
    manifest = corpus / "manifest.jsonl"
    rows = [r for r in mf.read_jsonl(manifest) if r["split"] in ("test", "heldout")]
    by_speaker = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["id"]):
        if len(by_speaker[row["speaker"]]) < per_speaker:
            by_speaker[row["speaker"]].append(row)
    model_name, rate, embed = _embedder(encoder, device)
    embeddings, names = {}, sorted(by_speaker)
    for n, name in enumerate(names):
        waves = [audio.load_audio(mf.resolve_audio(manifest, r["path"]), rate, max_seconds=None)
                 for r in by_speaker[name]]
        embeddings[name] = np.stack([embed(w) for w in waves])
        if (n + 1) % 25 == 0:
            log(f"embedded {n + 1} / {len(names)} speakers")
    threshold, eer, same, different = utterance_eer(embeddings, names)
    speaker_split = {r["speaker"]: r["split"] for r in rows}
    heldout = [n for n in names if speaker_split[n] == "heldout"]
    heldout_eer = utterance_eer(embeddings, heldout)[1] if len(heldout) > 1 else None
    apart = told_apart(np.stack([embeddings[n] for n in names]), separation)
    distinct = distinct_set(names, apart)
    confused = [[names[i], names[j]] for i, j in zip(*np.nonzero(np.triu(~apart, 1)))]
    speaker_family = {r["speaker"]: r.get("family", "engine") for r in rows}
    by_family = {}
    for voice_family in sorted(set(speaker_family.values())):  # counted within the family, on its own
        members = [i for i, n in enumerate(names) if speaker_family[n] == voice_family]
        chosen = distinct_set([names[i] for i in members], apart[np.ix_(members, members)])
        by_family[voice_family] = {"speakers": len(members), "distinct": len(chosen),
                                   "distinct_seen": sum(speaker_split[n] == "test" for n in chosen),
                                   "distinct_heldout": sum(speaker_split[n] == "heldout" for n in chosen)}
    report = {
        "corpus": str(corpus), "speaker_model": model_name, "utterances_per_speaker": per_speaker,
        "separation": separation, "speakers": len(names), "distinct": len(distinct),
        "distinct_seen": sum(speaker_split[n] == "test" for n in distinct),
        "distinct_heldout": sum(speaker_split[n] == "heldout" for n in distinct),
        "utterance_eer": round(eer, 4), "eer_threshold": round(threshold, 4),
        "heldout_speakers": len(heldout),
        "heldout_utterance_eer": None if heldout_eer is None else round(heldout_eer, 4),
        "same_speaker_sim_mean": round(float(same.mean()), 4),
        "different_speaker_sim_mean": round(float(different.mean()), 4),
        "by_family": by_family,
        "pairs_not_told_apart": confused,
    }
    if out:
        write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    return report
