"""Speaker similarity: cosine between speaker embeddings of the output and an enrollment.

The enrollment is the manifest's prompt / enrollment / target-speaker reference, or the
ground-truth recording when the manifest has none (then SIM says how much of the voice
survived, as in a codec's reconstruction).

Backends:
  sim         Resemblyzer's GE2E encoder (Wan et al. 2018), the offline default. Its weights
              ship in the `resemblyzer` wheel; we run them in our own module because the
              package imports webrtcvad, which breaks on current setuptools.
  sim_ecapa   speechbrain ECAPA-TDNN (VoxCeleb), when speechbrain and the hub are reachable.
  sim_wavlm   WavLM-base-plus-SV through transformers, same condition.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from evaluation.metrics.base import (
    METRIC_RATE,
    MetricError,
    MetricUnavailable,
    Sample,
    metric,
    package_version,
    wheel_file,
)

RESEMBLYZER = "resemblyzer==0.1.4"


class GE2EEncoder(nn.Module):
    """3-layer LSTM over 40-band power mels (25 ms / 10 ms at 16 kHz) -> ReLU projection, L2-normalized.

    An utterance is cut into 1.6 s partials at 1.3 per second; its embedding is the
    normalized mean of the partial embeddings (the encoder's published inference recipe).
    """

    n_mels, hidden, layers, partial_frames, hop = 40, 256, 3, 160, 160
    partials_per_second, min_coverage, target_dbfs = 1.3, 0.75, -30.0

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(self.n_mels, self.hidden, self.layers, batch_first=True)
        self.linear = nn.Linear(self.hidden, self.hidden)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        embeds = torch.relu(self.linear(hidden[-1]))
        return embeds / embeds.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def mel(self, wav16k: np.ndarray) -> np.ndarray:
        import librosa

        return librosa.feature.melspectrogram(y=wav16k, sr=METRIC_RATE, n_fft=400, hop_length=self.hop,
                                              n_mels=self.n_mels).astype(np.float32).T

    @torch.no_grad()
    def embed(self, wav16k: np.ndarray) -> np.ndarray:
        wav = np.asarray(wav16k, np.float32)
        rms = float(np.sqrt(np.mean(wav ** 2)))
        if rms == 0:
            raise MetricError("silent audio has no speaker embedding")
        gain_db = self.target_dbfs - 20 * np.log10(rms)
        if gain_db > 0:  # the encoder was trained on audio raised to -30 dBFS, never lowered
            wav = wav * 10 ** (gain_db / 20)
        n_frames = len(wav) // self.hop + 1
        step = int(round(METRIC_RATE / self.partials_per_second / self.hop))
        starts = list(range(0, max(1, n_frames - self.partial_frames + step + 1), step))
        if len(starts) > 1 and (n_frames - starts[-1]) / self.partial_frames < self.min_coverage:
            starts.pop()
        needed = (starts[-1] + self.partial_frames) * self.hop
        wav = np.pad(wav, (0, max(0, needed - len(wav))))
        mel = self.mel(wav)
        partials = np.stack([mel[s:s + self.partial_frames] for s in starts])
        device = next(self.parameters()).device
        embeds = self(torch.from_numpy(partials).to(device)).mean(0)
        return (embeds / embeds.norm()).cpu().numpy()


def load_ge2e(device: str) -> GE2EEncoder:
    path = wheel_file(RESEMBLYZER, "resemblyzer/pretrained.pt", module="resemblyzer")
    state = torch.load(path, map_location="cpu", weights_only=True)["model_state"]
    for training_only in ("similarity_weight", "similarity_bias"):  # the GE2E loss's scale and bias
        state.pop(training_only, None)
    encoder = GE2EEncoder()
    encoder.load_state_dict(state)
    return encoder.eval().to(device)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


class SimilarityScorer:
    def __init__(self, embed, info: dict):
        self.embed, self.info = embed, info

    def __call__(self, sample: Sample) -> dict[str, float]:
        which = "enrollment" if sample.enrollment_path is not None else "reference"
        if getattr(sample, f"{which}_path") is None:
            raise MetricError("the manifest gives neither an enrollment nor a reference recording")
        output = self.embed(sample.audio())
        values = {"sim": cosine(output, self.embed(sample.audio(which)))}
        if sample.interferer_path is not None:  # extraction: whose voice the output is closer to
            values["sim_interferer"] = cosine(output, self.embed(sample.audio("interferer")))
            values["target_closer"] = float(values["sim"] > values["sim_interferer"])
        return values

    def close(self) -> None:
        self.embed = None


SIM_COLUMNS = ("sim", "sim_interferer", "target_closer")  # the last two only where a mixture's interferer is known
SIM_BETTER = {"sim": True, "sim_interferer": False, "target_closer": True}


@metric("sim", SIM_COLUMNS, needs=("enrollment",), higher_is_better=SIM_BETTER,
        description="speaker similarity, Resemblyzer GE2E cosine (-1..1); with an interferer, the similarity "
                    "to it and whether the output is closer to the target voice")
def _sim(device: str, options: dict) -> SimilarityScorer:
    encoder = load_ge2e(device)
    return SimilarityScorer(encoder.embed, {"speaker_model": f"Resemblyzer GE2E ({RESEMBLYZER}, pretrained.pt)",
                                            "speaker_note": "volume-normalized to -30 dBFS, no VAD trimming"})


@metric("sim_ecapa", SIM_COLUMNS, needs=("enrollment",), higher_is_better=SIM_BETTER,
        description="speaker similarity, speechbrain ECAPA-TDNN (VoxCeleb) cosine")
def _sim_ecapa(device: str, options: dict) -> SimilarityScorer:
    source = options.get("ecapa_model") or "speechbrain/spkrec-ecapa-voxceleb"
    try:
        from speechbrain.inference.speaker import EncoderClassifier

        model = EncoderClassifier.from_hparams(source=source, run_opts={"device": device})
    except Exception as error:  # ImportError, torchaudio mismatch, hub unreachable
        raise MetricUnavailable(f"speechbrain ECAPA cannot load ({type(error).__name__}: {error})") from None

    @torch.no_grad()
    def embed(wav16k: np.ndarray) -> np.ndarray:
        return model.encode_batch(torch.from_numpy(wav16k)[None].to(device)).squeeze().cpu().numpy()

    return SimilarityScorer(embed, {"speaker_model": f"{source} (speechbrain {package_version('speechbrain')})"})


@metric("sim_wavlm", SIM_COLUMNS, needs=("enrollment",), higher_is_better=SIM_BETTER,
        description="speaker similarity, WavLM-base-plus-SV x-vector cosine")
def _sim_wavlm(device: str, options: dict) -> SimilarityScorer:
    source = options.get("wavlm_model") or "microsoft/wavlm-base-plus-sv"
    try:
        from transformers import AutoFeatureExtractor, WavLMForXVector

        extractor = AutoFeatureExtractor.from_pretrained(source)
        model = WavLMForXVector.from_pretrained(source).eval().to(device)
    except Exception as error:
        raise MetricUnavailable(f"WavLM-SV cannot load ({type(error).__name__}: {error})") from None

    @torch.no_grad()
    def embed(wav16k: np.ndarray) -> np.ndarray:
        inputs = extractor(wav16k, sampling_rate=METRIC_RATE, return_tensors="pt").to(device)
        return model(**inputs).embeddings.squeeze().cpu().numpy()

    return SimilarityScorer(embed, {"speaker_model": f"{source} (transformers {package_version('transformers')})"})
