"""Fitting the semantic tokenizer (models/semantic_tokenizer.py): the corpus's semantic features cached
per utterance, k-means (scikit-learn's MiniBatchKMeans) over pooled, standardized features of the
training split, and the tokens of every utterance cached for the models that read them."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from models import audio, registry
from models.data import manifest as mf
from models.data import tasks
from models.data.dataset import Feature, SpeechDataset
from models.semantic_tokenizer import (
    WHISPER,
    SemanticTokenizer,
    SemanticTokenizerConfig,
    encode_wavs,
    pool,
    semantic_encoder,
)

Progress = Callable[[Iterable], Iterable]


def semantic_feature(encoder: str = WHISPER) -> Feature:
    """The encoder's features (dim, frames) at its own rate, under a cache name per encoder."""
    def compute(wav: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(encode_wavs(semantic_encoder(encoder), [wav])[0].T.copy())

    return Feature("semantic_" + re.sub(r"[^a-z0-9]+", "_", encoder.lower()).strip("_"), compute, 50.0)


def token_feature(tokenizer: str, model: SemanticTokenizer) -> Feature:
    """A tokenizer's ids (1, frames), computed from the cached features, cached as integers."""
    source = semantic_feature(model.config.encoder)

    def compute(features: torch.Tensor) -> torch.Tensor:
        return model.tokens(pool(features.T, source.frames_per_second, model.config.rate))[None]

    return Feature(f"semantic_tokens_{Path(tokenizer).name}", compute, model.config.rate, source=source,
                   integer=True)


def semantic_tokens(tokenizer: str) -> Feature:
    """The token feature of a semantic tokenizer checkpoint (loaded by name)."""
    model, _, _ = registry.load_model(tokenizer, "cpu")
    return token_feature(tokenizer, model)


def dataset(corpus: str | Path, feature: Feature, splits: tuple[str, ...]) -> SpeechDataset:
    """A corpus folder's utterances, or a task-set folder's (tasks.json) distinct audio files."""
    manifest = Path(corpus)
    if manifest.is_dir() and (manifest / "tasks.json").is_file():
        manifest = tasks.audio_manifest(manifest)
    elif manifest.is_dir():
        manifest = manifest / "manifest.jsonl"
    return SpeechDataset(manifest, splits, feature=feature, cache_dir=manifest.parent / "cache", max_seconds=None)


def cache_features(corpus: str | Path, encoder: str = WHISPER, splits: tuple[str, ...] = ("train", "valid", "test"),
                   batch: int = 32, progress: Progress = iter) -> int:
    """Encode every utterance of `splits` not cached yet, `batch` at a time; returns how many were encoded."""
    feature = semantic_feature(encoder)
    data = dataset(corpus, feature, splits)
    todo = [row for row in data.rows if not data.cache_path(row).is_file()]
    model = semantic_encoder(encoder)
    for start in progress(range(0, len(todo), batch)):
        rows = todo[start:start + batch]
        wavs = [audio.load_audio(mf.resolve_audio(data.manifest, r["path"]), audio.SAMPLE_RATE, max_seconds=None)
                for r in rows]
        for row, value in zip(rows, encode_wavs(model, wavs)):
            data.store(row, torch.from_numpy(value.T.copy()))
    return len(todo)


def fit_tokenizer(corpus: str | Path, out: str | Path, rate: float = 25.0, clusters: int = 1024,
                  encoder: str = WHISPER, max_utterances: int = 4000, seed: int = 0,
                  progress: Progress = iter) -> Path:
    """k-means over the pooled features of up to `max_utterances` training utterances (a seeded sample);
    the checkpoint's card reports codebook usage and perplexity on the validation split."""
    from sklearn.cluster import MiniBatchKMeans

    start = time.perf_counter()
    feature = semantic_feature(encoder)
    cache_features(corpus, encoder, progress=progress)
    train = dataset(corpus, feature, ("train",))
    rows = list(train.rows)
    random.Random(seed).shuffle(rows)
    rows = rows[:max_utterances]
    x = torch.cat([pool(train.features(r).T, feature.frames_per_second, rate) for r in rows])  # (frames, dim)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-5)
    kmeans = MiniBatchKMeans(n_clusters=clusters, batch_size=8192, n_init=3, max_iter=200, random_state=seed)
    kmeans.fit(((x - mean) / std).numpy())
    config = SemanticTokenizerConfig(encoder=encoder, rate=rate, clusters=clusters, dim=x.shape[1])
    model = SemanticTokenizer(config)
    model.mean.copy_(mean)
    model.std.copy_(std)
    model.centroids.copy_(torch.from_numpy(kmeans.cluster_centers_).float())
    valid = dataset(corpus, feature, ("valid",))
    tokens = torch.cat([model.tokens(pool(valid.features(r).T, feature.frames_per_second, rate)) for r in valid.rows])
    usage = torch.bincount(tokens, minlength=clusters).float()
    p = usage[usage > 0] / usage.sum()
    card = {"data": f"{train.manifest} (train split: {len(rows)} of {len(train.rows)} utterances, "
                    f"{x.shape[0]} frames at {rate:g} Hz)",
            "steps": int(kmeans.n_steps_), "wall_time_s": round(time.perf_counter() - start, 1), "device": "cpu",
            "metrics": {"valid/codebook_usage": round(float((usage > 0).float().mean()), 4),
                        "valid/perplexity": round(float(torch.exp(-(p * p.log()).sum())), 1),
                        "valid/frames": int(tokens.numel())},
            "summary": f"k-means ({clusters} clusters, scikit-learn MiniBatchKMeans) over {encoder} features "
                       f"average-pooled to {rate:g} Hz and standardized."}
    return registry.save_checkpoint(model, config.to_dict(), card, out)


def cache_tokens(corpus: str | Path, tokenizer: str = "semantic_tokenizer",
                 splits: tuple[str, ...] = ("train", "valid", "test"), progress: Progress = iter) -> int:
    """Cache every utterance's semantic tokens (features first, where missing); returns how many rows."""
    model, _, _ = registry.load_model(tokenizer, "cpu")
    cache_features(corpus, model.config.encoder, splits, progress=progress)
    data = dataset(corpus, token_feature(tokenizer, model), splits)
    for row in progress(data.rows):
        data.features(row)
    return len(data.rows)
