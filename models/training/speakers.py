"""Enrollment embeddings for the recipes conditioned on a voice (KALL-E's speaker latent, SpeakerBeam's
adaptation): the frozen speaker encoder's embeddings of a few 3 s windows of every training utterance,
computed once into the corpus cache, and per batch item a window of *another* utterance of its speaker,
as an enrollment clip is at inference."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from models import registry
from models.data.dataset import MEL, Feature, SpeechDataset

SEGMENT_SECONDS = 3.0


def speaker_segments(encoder_name: str, segments: int = 3) -> Feature:
    """Speaker embeddings of up to `segments` windows of SEGMENT_SECONDS (start, middle, end) of an
    utterance, from the cached mel: a (embedding_dim, windows) feature, cached per encoder."""
    encoder, _, _ = registry.load_model(encoder_name, "cpu")
    width = int(SEGMENT_SECONDS * MEL.frames_per_second)

    def compute(mel: torch.Tensor) -> torch.Tensor:
        frames = mel.shape[-1]
        starts = sorted({int(s) for s in np.linspace(0, max(0, frames - width), segments)})
        windows = torch.stack([mel[:, s: s + width] for s in starts])  # equal widths, or one short window
        with torch.no_grad():
            return F.normalize(encoder(windows).float(), dim=-1).T

    return Feature(f"speaker-{registry.weights_digest(encoder)}", compute, 1.0 / SEGMENT_SECONDS, source=MEL)


class SpeakerWindows:
    """Every training utterance's window embeddings, by speaker index."""

    def __init__(self, train_set: SpeechDataset, encoder_name: str):
        feature = speaker_segments(encoder_name)
        self.speaker_index = train_set.speaker_index
        self.by_speaker: dict[int, list[tuple[str, torch.Tensor]]] = defaultdict(list)  # (utterance, (windows, dim))
        for row in tqdm(train_set.rows, desc="speaker segments", mininterval=30):
            self.by_speaker[train_set.speaker_index[row["speaker"]]].append(
                (row["id"], train_set.features(row, feature).T))

    def draw(self, batch: dict, step: int) -> torch.Tensor:
        """(batch, embedding_dim): a random window of another training utterance of each item's speaker
        (of its own utterance only when the speaker has no other)."""
        generator = torch.Generator().manual_seed(step * 104729 + 3)
        out = []
        for utterance, speaker in zip(batch["ids"], batch["speaker"].tolist()):
            voice = self.by_speaker.get(speaker)
            if not voice:
                raise ValueError(f"voice {speaker} has no training utterance to enroll from (validate on voices "
                                 "that trained)")
            pool = [e for i, e in voice if i != utterance] or [e for _, e in voice]
            windows = pool[int(torch.randint(len(pool), (1,), generator=generator))]
            out.append(windows[int(torch.randint(len(windows), (1,), generator=generator))])
        return torch.stack(out)

    def of_voice(self, speaker: str) -> list[tuple[str, torch.Tensor]]:
        """The window embeddings of a speaker's training utterances (validation picks one); those of some
        training speaker when this one never trained."""
        return self.by_speaker.get(self.speaker_index.get(speaker, -1)) or next(iter(self.by_speaker.values()))
