"""Voices drawn from seeds (a TTS backend with a `voice_seed` setting, e.g. KALL-E): are they
intelligible, how different are they from each other (diversity), and how far from every voice the
model trained on (novelty)?

Each seed speaks the same sentences (same sampling seed, CFG); its WER is over those sentences and
its voice is the mean GE2E embedding of its utterances. Diversity is the mean cosine similarity
between the voices of two seeds (lower: more varied). Novelty compares each seed's voice with the
centroid of every training speaker of a corpus: the nearest one's similarity and name (a seed as
close as two utterances of one speaker are would be a copy of that speaker).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from evaluation.metrics.asr import DEFAULT_ASR, load_asr, wer_counts
from evaluation.metrics.base import METRIC_RATE
from evaluation.metrics.speaker import load_ge2e
from models import audio
from models.data import manifest as mf
from models.files import write_text_atomic

SEED_TEXTS = (
    "The birch canoe slid on the smooth planks.",
    "Bring the red box in from the garden before it rains.",
    "We walked along the river until the lights of the town came into view.",
)
INTELLIGIBLE_WER = 0.3


def training_centroids(corpus: str | Path, embed, per_speaker: int = 4) -> dict[str, np.ndarray]:
    """Unit centroid of `per_speaker` training utterances of each training speaker of a corpus."""
    manifest = Path(corpus) / "manifest.jsonl"
    by_speaker: dict[str, list] = defaultdict(list)
    for row in sorted(mf.read_jsonl(manifest), key=lambda r: r["id"]):
        if row["split"] == "train" and len(by_speaker[row["speaker"]]) < per_speaker:
            by_speaker[row["speaker"]].append(row)
    centroids = {}
    for name, rows in by_speaker.items():
        e = np.mean([embed(audio.load_audio(mf.resolve_audio(manifest, r["path"]), METRIC_RATE, max_seconds=None))
                     for r in rows], axis=0)
        centroids[name] = e / np.linalg.norm(e)
    return centroids


def voice_seed_report(model: str, seeds: int = 50, texts: tuple[str, ...] = SEED_TEXTS, corpus: str | None = None,
                      cfg: float = 2.0, seed: int = 0, device: str = "cpu", out: str | Path | None = None,
                      log=print, **controls) -> dict:
    from models import pipelines
    from models.roles import VOICE_SEEDS

    if VOICE_SEEDS not in pipelines.tts_capabilities(model):
        raise ValueError(f"{model} has no voice seeds (it does not declare {VOICE_SEEDS})")
    asr, encoder = load_asr(DEFAULT_ASR, device), load_ge2e(device)
    rows = []
    for voice_seed in range(seeds):
        errors = words = 0
        embeddings = []
        for index, text in enumerate(texts):
            wav, _ = pipelines.tts(text, model, cfg=cfg, seed=seed + index, device=device, voice_seed=voice_seed,
                                   **controls)
            heard = audio.resample(wav, audio.SAMPLE_RATE, METRIC_RATE)
            counts = wer_counts(text, asr.transcribe(heard))
            errors, words = errors + counts.errors, words + counts.reference_length
            embeddings.append(encoder.embed(heard))
        voice = np.mean(embeddings, axis=0)
        rows.append({"voice_seed": voice_seed, "wer": errors / max(1, words), "voice": voice / np.linalg.norm(voice)})
        log(f"voice seed {voice_seed}: WER {rows[-1]['wer']:.3f}")
    voices = np.stack([r["voice"] for r in rows])
    pairwise = voices @ voices.T
    upper = np.triu(np.ones_like(pairwise, dtype=bool), 1)
    report = {
        "model": model, "seeds": seeds, "texts": list(texts), "cfg": cfg, "sampling_seed": seed, "controls": controls,
        "intelligible_wer": INTELLIGIBLE_WER,
        "share_intelligible": float(np.mean([r["wer"] <= INTELLIGIBLE_WER for r in rows])),
        "mean_wer": float(np.mean([r["wer"] for r in rows])),
        "diversity_mean_pairwise_sim": float(pairwise[upper].mean()) if seeds > 1 else None,
    }
    if corpus:
        centroids = training_centroids(corpus, encoder.embed)
        names = sorted(centroids)
        table = np.stack([centroids[n] for n in names])
        nearest = voices @ table.T
        for row, sims in zip(rows, nearest):
            row["nearest_training_speaker"] = names[int(sims.argmax())]
            row["nearest_sim"] = float(sims.max())
        report["novelty_mean_nearest_sim"] = float(np.mean([r["nearest_sim"] for r in rows]))
        report["training_speakers"] = len(names)
    report["per_seed"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "voice"}
                          for r in rows]
    if out:
        write_text_atomic(out, json.dumps(report, indent=1) + "\n")
    return report
