"""Training recipe of the speaker encoder (models/speaker_encoder.py): additive angular margin
softmax (AAM, Deng et al. 2019) over the training speakers on random mel windows, under recording
conditions when data.feature is mel_conditions, so the embedding follows the voice, not the channel."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from models.data.dataset import SpeechDataset
from models.speaker_encoder import SpeakerEncoder, SpeakerEncoderConfig
from models.training import Task, task, unwrap


def additive_angular_margin(embeddings: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor,
                            margin: float, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on s cos(theta + m) for the true speaker and s cos(theta) for the others:
    the margin asks each embedding to sit closer to its own speaker's direction than to any other
    by an angle m. Returns (loss, top-1 accuracy without the margin)."""
    cosine = F.normalize(embeddings.float(), dim=-1) @ F.normalize(weights.float(), dim=-1).T  # (batch, speakers)
    theta = torch.acos(cosine.clamp(-1 + 1e-6, 1 - 1e-6))
    target = torch.cos(theta + margin)
    # past theta = pi - m, cos(theta + m) would rise again: fall back to a linear penalty there
    target = torch.where(theta + margin < math.pi, target, cosine - margin * math.sin(margin))
    one_hot = F.one_hot(labels, cosine.shape[1]).bool()
    logits = scale * torch.where(one_hot, target, cosine)
    accuracy = (cosine.argmax(-1) == labels).float().mean()
    return F.cross_entropy(logits, labels), accuracy


class SpeakerClassifier(nn.Module):
    """The encoder and one learned direction per training speaker; only the encoder is exported."""

    def __init__(self, encoder: SpeakerEncoder, classes: int):
        super().__init__()
        self.encoder = encoder
        self.directions = nn.Parameter(torch.randn(classes, encoder.embedding_dim) * 0.01)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder(mel)


@task("speaker_encoder")
class SpeakerEncoderTask(Task):
    margin, scale = 0.2, 30.0

    def __init__(self, model_config: dict):
        super().__init__(model_config)
        self.config = SpeakerEncoderConfig.from_dict(model_config)

    def prepare(self, train_set: SpeechDataset) -> None:
        """One class per speaker index (all splits index alike; held-out classes never see a batch)."""
        self.classes = len(train_set.speakers)

    def build(self) -> nn.Module:
        return SpeakerClassifier(SpeakerEncoder(self.config), self.classes)

    def exported(self, model: nn.Module) -> nn.Module:
        return model.encoder

    def losses(self, model: nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict, None]:
        core = unwrap(model)
        embeddings = model(batch["features"])
        loss, accuracy = additive_angular_margin(embeddings, core.directions, batch["speaker"].to(embeddings.device),
                                                 self.margin, self.scale)
        return loss, {"aam": loss.item(), "accuracy": accuracy.item()}, None
