"""Training recipe of the Metis T2S (models/metis.py; the S2A's is models/training/metis_s2a.py).

The T2S over the corpus's semantic tokens (cached as integers). Pre-training (`text: false`) needs no
transcripts: each sequence is masked by the schedule (at least MASK_FLOOR), with a prompt prefix kept unmasked
with probability `prompt_probability`. The TTS fine-tune (`text: true`, `train.init_from` the pre-trained
checkpoint with `init_modules` naming what to copy) puts the phonemes before the tokens; with probability
`condition_dropout` the phonemes and the prompt are dropped (the unconditional branch of guidance). With
`lora_rank` > 0 the transformer's projections get LoRA layers (train them with `train.trainable`), merged into
the weights at export.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import torch
from torch import nn

from models import audio, registry
from models.data.dataset import Feature, SpeechDataset
from models.masked import MASK_FLOOR, masked_cross_entropy, training_mask
from models.metis import MetisConfig, MetisT2S
from models.modules import add_lora, merge_lora
from models.roles import Scorers, TTSRequest
from models.training import Task, step_generator, task, unwrap
from models.training.semantic import semantic_tokens


@task("metis")
class MetisTask(Task):
    def __init__(self, model_config: dict):
        super().__init__(model_config)
        self.config = MetisConfig.from_dict(model_config)

    def feature(self) -> Feature:
        return semantic_tokens(self.config.semantic_tokenizer)

    def prepare(self, train_set: SpeechDataset) -> None:
        """The tokenizer's vocabulary and rate, and the training data's tokens per phoneme symbol."""
        tokenizer, _, _ = registry.load_model(self.config.semantic_tokenizer, "cpu")
        picks = random.Random(0).sample(range(len(train_set)), min(400, len(train_set)))
        tokens = sum(train_set.frames(i) for i in picks)
        symbols = sum(len(train_set.text_ids(train_set.rows[i])) for i in picks)
        self.model_config["fitted"] = {"vocabulary": int(tokenizer.vocabulary_size),
                                       "token_rate": float(tokenizer.frame_rate),
                                       "tokens_per_symbol": round(tokens / max(1, symbols), 4)}
        self.model_config.setdefault("frontend", train_set.frontend.to_dict())
        self.config = MetisConfig.from_dict(self.model_config)

    def build(self) -> MetisT2S:
        model = MetisT2S(self.config)
        if self.config.lora_rank:
            add_lora(model.transformer, self.config.lora_rank, self.config.lora_targets)
        return model

    def exported(self, model: nn.Module) -> MetisT2S:
        return merge_lora(copy.deepcopy(model)) if self.config.lora_rank else model

    def losses(self, model: nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict, None]:
        core, c = unwrap(model), self.config
        if c.text and "crop_starts" in batch:
            raise ValueError("Metis TTS trains on whole utterances (the phonemes must match the tokens): set "
                             "train.segment_frames: null")
        tokens, lengths = batch["features"][:, 0], batch["feature_lengths"]
        generator = step_generator(step, 11)
        # the drawn time, not the floored masked share's: decoding runs t down to 1/S (the authors' code too)
        masked, prompts, t = training_mask(lengths.cpu(), tokens.shape[1], generator, c.prompt_probability,
                                           c.prompt_fraction, MASK_FLOOR)
        dropped = torch.rand(len(lengths), generator=generator) < (c.condition_dropout if model.training else 0.0)
        texts, inputs, targets, where = [], [], [], []
        for i, n in enumerate(lengths.tolist()):
            start = int(prompts[i]) if dropped[i] else 0  # the unconditional view: no prompt, no phonemes
            ids, mask = tokens[i, start:n].cpu(), masked[i, start:n]
            inputs.append(torch.where(mask, torch.full_like(ids, core.mask_id), ids))
            targets.append(ids)
            where.append(mask)
            if c.text:
                text = batch["text"][i, : batch["text_lengths"][i]].cpu()
                texts.append(torch.tensor([core.null_id]) if dropped[i] else text)
            else:
                texts.append(None)
        logits = model(texts, inputs, t)
        device = logits[0].device
        loss = masked_cross_entropy(torch.cat(logits), torch.cat(targets).to(device), torch.cat(where).to(device))
        with torch.no_grad():
            hits = torch.cat([(lg.argmax(-1).cpu() == y)[m] for lg, y, m in zip(logits, targets, where)])
        return loss, {"ce": loss.item(), "accuracy": float(hits.float().mean())}, None

    def validate(self, model: nn.Module, items: list[dict], out_dir: Path, scorers: Scorers) -> dict:
        """With text and a resolvable acoustic decoder: speak validation sentences without a prompt (cfg 2.5,
        seed 0) and score their WER with the harness's transcriber."""
        if not (items and self.config.text and scorers.transcribe and scorers.word_errors):
            return {}
        try:
            registry.resolve(self.config.acoustic_decoder)
        except registry.CheckpointNotFound:  # no S2A checkpoint yet: no audio to score
            return {}
        errors, words = 0, 0
        out_dir.mkdir(parents=True, exist_ok=True)
        for item in items:
            wav = model.synthesize(TTSRequest(item["normalized_text"], cfg=2.5, seed=0))
            if not len(wav):
                continue
            audio.save_audio(out_dir / f"{item['id']}.wav", wav)
            wrong, count = scorers.word_errors(item["normalized_text"], scorers.transcribe(wav, audio.SAMPLE_RATE))
            errors, words = errors + wrong, words + count
        return {"wer": errors / max(1, words)}
