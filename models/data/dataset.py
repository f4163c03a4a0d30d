"""Training data: a dataset over a corpus manifest and a length-bucketing batch sampler.

Features are computed on the fly, or once into a cache folder (fp16 .npy, int32 for ids, read
with allow_pickle=False) that later epochs and runs reuse. The default feature is the shared
mel; a model can pass any `Feature` (e.g. a codec's latents) under its own cache name, and
declare further `Stream`s of each item (tokens, conditions, task inputs) that batches carry
beside it. The split is the manifest's own `split` field, fixed when the corpus was built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models import audio
from models.data import manifest as mf
from models.files import atomic_path
from models.text import TextFrontend


@dataclass(frozen=True)
class Feature:
    """A named waveform -> (channels, frames) transform; the name keys the cache.

    With a `source`, `compute` takes that feature's (cached) tensor instead of the waveform,
    e.g. codec latents computed from the cached mel.
    """

    name: str
    compute: Callable[[np.ndarray], torch.Tensor] | Callable[[torch.Tensor], torch.Tensor]
    frames_per_second: float
    source: "Feature | None" = None
    cached: bool = True  # False: a random transform, computed afresh at every read
    integer: bool = False  # ids (tokens): cached and read as integers, exact for any vocabulary


@dataclass(frozen=True)
class Stream:
    """A further field of a training item (beside its text and training feature): a feature of the same
    utterance, and how a batch crops it. "aligned": the same span of time as the training feature's
    crop, at the stream's own frame rate (semantic tokens beside acoustic tokens, a noisy input beside
    its clean target); "whole": never cropped (a prompt, an utterance-level condition)."""

    feature: Feature
    crop: str = "aligned"

    def __post_init__(self):
        if self.crop not in ("aligned", "whole"):
            raise ValueError(f"a stream is cropped 'aligned' or 'whole', not {self.crop!r}")


MEL = Feature("mel", lambda wav: audio.mel_spectrogram(wav),
              audio.SAMPLE_RATE / audio.MelConfig().hop_length)


class SpeechDataset(torch.utils.data.Dataset):
    """Utterances of one or more splits: text ids, features, speaker index, and each declared stream
    under its name."""

    def __init__(self, manifest: str | Path, splits: tuple[str, ...] = ("train",),
                 frontend: TextFrontend | None = None, feature: Feature = MEL,
                 cache_dir: str | Path | None = None, max_seconds: float | None = 20.0,
                 streams: dict[str, Stream] | None = None):
        self.manifest = Path(manifest)
        rows = mf.read_jsonl(self.manifest)
        self.speakers = sorted({r["speaker"] for r in rows})  # over all splits: stable indices
        self.speaker_index = {name: i for i, name in enumerate(self.speakers)}
        self.rows = [r for r in rows if r["split"] in splits and (max_seconds is None or r["duration"] <= max_seconds)]
        if not self.rows:
            raise ValueError(f"{manifest}: no utterances in split(s) {', '.join(splits)}")
        self.frontend = frontend or TextFrontend.default()
        self.feature = feature
        self.streams = dict(streams or {})
        clash = set(self.streams) & set(RESERVED)
        if clash:
            raise ValueError(f"stream name {sorted(clash)[0]!r} is a field every item has (reserved: {RESERVED})")
        self.cache = Path(cache_dir) if cache_dir else None

    def __len__(self) -> int:
        return len(self.rows)

    def frames(self, index: int) -> int:
        """Feature length, known from the manifest without reading audio (for bucketing)."""
        return max(1, int(self.rows[index]["duration"] * self.feature.frames_per_second))

    def text_ids(self, row: dict) -> list[int]:
        if self.frontend.mode == "phoneme" and row.get("phonemes"):
            return self.frontend.symbols.encode(row["phonemes"])
        return self.frontend.encode([row["normalized_text"]])[0]

    def cache_path(self, row: dict, feature: Feature | None = None) -> Path | None:
        """Where a row's feature is cached (None: no cache, or a feature computed afresh at every read)."""
        feature = feature or self.feature
        return self.cache / feature.name / f"{row['id']}.npy" if self.cache and feature.cached else None

    def store(self, row: dict, value: torch.Tensor, feature: Feature | None = None) -> torch.Tensor:
        """Cache a row's computed feature (fp16, or int32 ids for an integer feature; written atomically);
        returns what a cache hit will read."""
        feature = feature or self.feature
        cached = self.cache_path(row, feature)
        if feature.integer:
            value = value.long()
        if cached is None:
            return value
        stored = value.numpy().astype(np.int32 if feature.integer else np.float16)
        with atomic_path(cached) as tmp:
            np.save(tmp, stored)
        return _read(stored, feature)

    def features(self, row: dict, feature: Feature | None = None) -> torch.Tensor:
        feature = feature or self.feature
        cached = self.cache_path(row, feature)
        if cached is not None and cached.is_file():
            return _read(np.load(cached, allow_pickle=False), feature)
        if feature.source is not None:
            value = feature.compute(self.features(row, feature.source)).cpu()
        else:
            wav = audio.load_audio(mf.resolve_audio(self.manifest, row["path"]), audio.SAMPLE_RATE, max_seconds=None)
            value = feature.compute(wav).cpu()
        value = value if feature.integer else value.float()
        return self.store(row, value, feature)  # the same values a cache hit returns

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        return {"id": row["id"], "speaker": self.speaker_index[row["speaker"]],
                "text": torch.tensor(self.text_ids(row), dtype=torch.long), "features": self.features(row),
                **{name: self.features(row, stream.feature) for name, stream in self.streams.items()}}


RESERVED = ("id", "speaker", "text", "features")


def _read(stored: np.ndarray, feature: Feature) -> torch.Tensor:
    return torch.from_numpy(stored.astype(np.int64 if feature.integer else np.float32))


def collate(items: list[dict]) -> dict:
    """Pad text, features and every stream (channels, frames) to the longest in the batch (streams with
    zeros); `feature_lengths` and `<stream>_lengths` say what is real."""
    texts = torch.nn.utils.rnn.pad_sequence([i["text"] for i in items], batch_first=True)
    batch = {"ids": [i["id"] for i in items], "speaker": torch.tensor([i["speaker"] for i in items]),
             "text": texts, "text_lengths": torch.tensor([len(i["text"]) for i in items]),
             "features": _pad_frames([i["features"] for i in items]),
             "feature_lengths": torch.tensor([i["features"].shape[-1] for i in items])}
    for name in items[0].keys() - set(RESERVED):
        batch[name] = _pad_frames([i[name] for i in items])
        batch[f"{name}_lengths"] = torch.tensor([i[name].shape[-1] for i in items])
    return batch


def _pad_frames(values: list[torch.Tensor]) -> torch.Tensor:
    """(channels, frames) each -> (batch, channels, longest), zero-padded."""
    return torch.nn.utils.rnn.pad_sequence([v.T for v in values], batch_first=True).transpose(1, 2)
