"""Training recipe of Metis's masked acoustic decoder (models/metis_s2a.py).

The codec's tokens of each utterance are the training feature (cached as integers), the semantic tokens of the
same seconds an aligned stream. Each item draws the layer it learns (weights falling linearly with depth, or
geometrically with `layer_decay`: the upper layers of a residual codec are close to unpredictable noise), the
layers below given (of the codec's first `codebooks` layers, or all), an acoustic prompt prefix with
probability `prompt_probability` ([min(T/4, 5), T/2) frames, every layer given; dropped with probability
`condition_dropout` for guidance), and masks that layer's other frames by the schedule (no floor).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models import registry
from models.data.dataset import Feature, SpeechDataset, Stream
from models.masked import masked_cross_entropy, training_mask
from models.metis_s2a import MetisS2A, MetisS2AConfig
from models.training import Task, step_generator, task, unwrap
from models.training.semantic import semantic_tokens


def codec_tokens(codec: str) -> Feature:
    """A token codec's tokens (codebooks, frames) of each utterance, cached as integers per codec weights."""
    model, _, _ = registry.load_model(codec, "cpu")

    def compute(wav: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(model.encode_wav(wav))

    return Feature(f"tokens-{registry.weights_digest(model)}", compute, model.frame_rate_at(), integer=True)


@task("metis_s2a")
class MetisS2ATask(Task):
    def __init__(self, model_config: dict):
        super().__init__(model_config)
        self.config = MetisS2AConfig.from_dict(model_config)

    def feature(self) -> Feature:
        return codec_tokens(self.config.codec)

    def streams(self) -> dict[str, Stream]:
        return {"semantic": Stream(semantic_tokens(self.config.semantic_tokenizer))}

    def prepare(self, train_set: SpeechDataset) -> None:
        self.fit_to_stages()

    def fit_to_stages(self) -> None:
        """The codec's layers, codebook size and rate and the tokenizer's vocabulary and rate, into `fitted`."""
        codec, _, _ = registry.load_model(self.config.codec, "cpu")
        tokenizer, _, _ = registry.load_model(self.config.semantic_tokenizer, "cpu")
        layers = int(codec.num_codebooks)
        if self.config.codebooks is not None and not 1 <= self.config.codebooks <= layers:
            raise ValueError(f"codebooks must be 1..{layers} (the layers of {self.config.codec}), "
                             f"not {self.config.codebooks}")
        layers = self.config.codebooks or layers
        self.model_config["fitted"] = {"codebooks": layers, "codebook_size": int(codec.codebook_size),
                                       "acoustic_rate": float(codec.frame_rate_at()),
                                       "semantic_vocabulary": int(tokenizer.vocabulary_size),
                                       "semantic_rate": float(tokenizer.frame_rate)}
        self.config = MetisS2AConfig.from_dict(self.model_config)

    def build(self) -> MetisS2A:
        return MetisS2A(self.config)

    def layer_weights(self) -> torch.Tensor:
        """(codebooks,) the chance that an item learns each layer: falling linearly with depth, or
        geometrically by layer_decay."""
        c = self.config
        if c.layer_decay is None:
            weights = torch.arange(c.fitted.codebooks, 0, -1, dtype=torch.float)
        else:
            weights = c.layer_decay ** torch.arange(c.fitted.codebooks, dtype=torch.float)
        return weights / weights.sum()

    def semantic_at_frames(self, batch: dict, frames: int) -> torch.Tensor:
        """(batch, frames) the semantic id at each acoustic frame's moment, from the aligned semantic stream."""
        f = self.config.fitted
        count = len(batch["ids"])
        starts = batch.get("crop_starts", torch.zeros(count, dtype=torch.long)).cpu()
        offsets = batch.get("semantic_starts", torch.zeros(count, dtype=torch.long)).cpu()
        times = (starts[:, None] + torch.arange(frames)[None]) / f.acoustic_rate
        index = (times * f.semantic_rate).long() - offsets[:, None]
        limit = (batch["semantic_lengths"].cpu() - 1).clamp_min(0)[:, None]
        index = torch.minimum(index.clamp_min(0), limit)
        return batch["semantic"][:, 0].cpu().gather(1, index)

    def losses(self, model: nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict, None]:
        core, c = unwrap(model), self.config
        f = c.fitted
        tokens, lengths = batch["features"][:, : f.codebooks].cpu(), batch["feature_lengths"].cpu()
        batch_size, _, frames = tokens.shape
        generator = step_generator(step, 23)
        weights = self.layer_weights()
        layers = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
        prompts = torch.zeros(batch_size, dtype=torch.long)
        for i, n in enumerate(lengths.tolist()):
            if n >= 4 and float(torch.rand(1, generator=generator)) < c.prompt_probability:
                low, high = min(n // 4, 5), max(min(n // 4, 5) + 1, n // 2)
                prompts[i] = int(torch.randint(low, high, (1,), generator=generator))
        if model.training:
            prompts[torch.rand(batch_size, generator=generator) < c.condition_dropout] = 0
        fixed = torch.arange(frames)[None] < prompts[:, None]
        masked, _, t = training_mask(lengths, frames, generator, floor=0.0, fixed=fixed)
        rows = torch.arange(batch_size)
        inputs = tokens.clone()
        current = inputs[rows, layers]
        inputs[rows, layers] = torch.where(masked, torch.full_like(current, core.mask_id), current)
        semantic = self.semantic_at_frames(batch, frames)
        device = next(core.parameters()).device
        h = model(semantic.to(device), inputs.to(device), layers.to(device), t.to(device), prompts.to(device),
                  lengths.to(device))
        loss, hits, total = h.new_zeros(()), 0, 0
        count = int(masked.sum())
        for layer in layers.unique().tolist():
            chosen = layers == layer
            logits = core.layer_logits(h[chosen.to(device)], layer)  # (items, frames, size)
            target, where = tokens[chosen, layer].to(device), masked[chosen].to(device)
            loss = loss + masked_cross_entropy(logits, target, where) * int(where.sum()) / max(1, count)
            hits += int((logits.argmax(-1) == target)[where].sum())
            total += int(where.sum())
        return loss, {"ce": loss.item(), "accuracy": hits / max(1, total), "layer": float(layers.float().mean())}, None
