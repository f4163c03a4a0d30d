import librosa
import numpy as np
import pytest

from models.audio import AudioError, MelConfig, MelSpectrogram, mel_spectrogram


def reference_mel(wav: np.ndarray, c: MelConfig) -> np.ndarray:
    """HiFi-GAN's recipe written with numpy + librosa, independently of our torch code."""
    pad = (c.n_fft - c.hop_length) // 2
    padded = np.pad(wav, (pad, pad), mode="reflect")
    spec = librosa.stft(padded, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
                        window="hann", center=False)
    magnitude = np.sqrt(np.abs(spec) ** 2 + 1e-9)
    basis = librosa.filters.mel(sr=c.sample_rate, n_fft=c.n_fft, n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax)
    return np.log(np.maximum(basis @ magnitude, c.clamp))


def test_config_is_the_vocoders():
    c = MelConfig()
    assert (c.sample_rate, c.n_fft, c.hop_length, c.win_length, c.n_mels, c.fmin, c.fmax, c.clamp) == (
        22050, 1024, 256, 1024, 80, 0.0, 8000.0, 1e-5)


@pytest.mark.parametrize("samples", [22050, 22050 * 2 + 77, 1000])
def test_mel_matches_librosa(arctic_wav, samples):
    wav = np.resize(arctic_wav, samples)
    ours = mel_spectrogram(wav).numpy()
    ref = reference_mel(wav, MelConfig())
    assert ours.shape == (80, samples // 256) == ref.shape
    assert np.max(np.abs(ours - ref)) < 1e-3


def test_batched_mel_equals_single(arctic_wav):
    mel = MelSpectrogram()
    import torch

    batch = torch.from_numpy(np.stack([arctic_wav[:22050], arctic_wav[22050:44100]]))
    out = mel(batch)
    assert out.shape == (2, 80, 86)
    assert torch.allclose(out[1], mel(batch[1]), atol=1e-5)


def test_too_short_for_a_frame():
    with pytest.raises(AudioError, match="too short"):
        mel_spectrogram(np.ones(100, np.float32))
