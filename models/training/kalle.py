"""Training recipe of KALL-E (models/kalle.py): the KL losses on the Flow-VAE posteriors, with the
speaker latent S drawn from the voice distribution of a ~3 s segment of another utterance by the
same speaker (frozen speaker encoder); prompt pairs and CFG text dropout as SLED; validation speaks
sentences in a voice drawn from a validation speaker and scores them with the harness's transcriber."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import audio, registry
from models.data.dataset import Feature, SpeechDataset
from models.kalle import KALLE, KALLEConfig
from models.training import Scorers, Task, task, unwrap
from models.training.latents import codec_latents, fit_latent_statistics, voice_sequences
from models.training.speakers import SpeakerWindows


@task("kalle")
class KALLETask(Task):
    """Whole utterances: text + posteriors (mu; log sigma), paired into voice-continuation sequences."""

    def __init__(self, model_config: dict):
        super().__init__(model_config)
        self.config = KALLEConfig.from_dict(model_config)

    def feature(self) -> Feature:
        return codec_latents(self.config.codec)

    def prepare(self, train_set: SpeechDataset) -> None:
        """Latent statistics as SLED, and each training utterance's speaker-segment embeddings, by
        speaker: what S is drawn from (computed once into the corpus cache)."""
        self.model_config["fitted"] = fit_latent_statistics(train_set, self.config.latent_dim,
                                                            self.config.aligned_positions)
        self.model_config.setdefault("frontend", train_set.frontend.to_dict())
        encoder, _, _ = registry.load_model(self.config.speaker_encoder, "cpu")
        if encoder.embedding_dim != self.config.speaker_dim:
            raise ValueError(f"speaker_dim {self.config.speaker_dim} but {self.config.speaker_encoder} gives "
                             f"{encoder.embedding_dim}-dim embeddings")
        self.model_config["speaker_dim"] = encoder.embedding_dim
        self.config = KALLEConfig.from_dict(self.model_config)
        self.windows = SpeakerWindows(train_set, self.config.speaker_encoder)

    def build(self) -> KALLE:
        return KALLE(self.config)

    def losses(self, model: nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict, None]:
        core = unwrap(model)
        c = self.config
        texts, features, anchors = voice_sequences(batch, c.prompt_pairs, c.text_dropout, core.null_id,
                                                   core.frontend.symbols.encode(" "), step)
        anchors = anchors if c.anchored_pairs else None
        posteriors = [(f[:, : c.latent_dim], f[:, c.latent_dim:]) for f in features]
        embeddings = self.windows.draw(batch, step)
        out = (core.loss(embeddings, texts, posteriors, anchors) if model is core
               else model(embeddings, texts, posteriors, anchors))
        logs = {k: v.item() for k, v in out.items()}
        if not model.training:  # how much the text helps: the loss gap to the CFG null text
            null = core.loss(embeddings, [torch.full_like(t, core.null_id) for t in texts], posteriors, anchors)
            logs["text_gain"] = null["kl"].item() - logs["kl"]
        return out["total"], logs, None

    def validate(self, model: nn.Module, items: list[dict], out_dir: Path, scorers: Scorers) -> dict:
        """Speak validation sentences (cfg 2, seed 0) in the voice of a segment of another utterance of
        the same speaker; the WER with a transcriber, and the mean length."""
        if not items:
            return {}
        device = str(next(model.parameters()).device)
        codec, _, _ = registry.load_model(self.config.codec, device)
        scored = scorers.transcribe is not None and scorers.word_errors is not None
        errors, words, frames = 0, 0, []
        out_dir.mkdir(parents=True, exist_ok=True)
        for n, item in enumerate(items):
            ids = model.frontend.encode([item["normalized_text"]])[0]
            pool = self.windows.of_voice(item["speaker"])
            embedding = pool[n % len(pool)][1][0]  # a segment of a training utterance of this voice
            voice = model.voice_distribution(embedding)[0].detach()
            z = list(model.generate(ids, voice, cfg=2.0, seed=0))
            frames.append(len(z))
            if not z:
                continue
            wav = codec.decode_wav(torch.stack(z))
            audio.save_audio(out_dir / f"{item['id']}.wav", wav)
            if scored:
                wrong, count = scorers.word_errors(item["normalized_text"], scorers.transcribe(wav, audio.SAMPLE_RATE))
                errors, words = errors + wrong, words + count
        metrics = {"frames": float(np.mean(frames))}
        return {"wer": errors / max(1, words), **metrics} if scored else metrics
