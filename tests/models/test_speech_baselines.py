import json

import numpy as np
import pytest

from evaluation.metrics.signal import si_sdr
from models import audio, pipelines
from models.roles import SpeechRequest
from models.speech_baselines import BASELINES, KnnVC

SR = audio.SAMPLE_RATE


def noisy(clean: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(clean)).astype(np.float32)
    noise *= np.sqrt(np.mean(clean ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    return clean + noise


@pytest.mark.parametrize("name", ["wiener", "noisereduce"])
def test_an_enhancement_baseline_raises_si_sdr_and_keeps_the_length(name, arctic_wav):
    mixture = noisy(arctic_wav, 5.0)
    out = BASELINES[name]().transform(SpeechRequest("enhance", mixture))
    assert out.shape == mixture.shape and np.isfinite(out).all()
    assert si_sdr(arctic_wav, out, SR) > si_sdr(arctic_wav, mixture, SR) + 0.5  # dB (wiener gains 3.6 here)


def test_the_wiener_gain_floor_bounds_what_it_removes(arctic_wav):
    mixture = noisy(arctic_wav, 5.0)
    gentle = BASELINES["wiener"]().transform(SpeechRequest("enhance", mixture, controls={"floor_db": -3}))
    strong = BASELINES["wiener"]().transform(SpeechRequest("enhance", mixture, controls={"floor_db": -30}))
    assert np.sum(gentle ** 2) > np.sum(strong ** 2)  # a higher floor leaves more of the noise
    assert np.sum(gentle ** 2) >= 10 ** (-3 / 10) * np.sum(mixture ** 2) * 0.99


def test_knn_vc_speaks_from_the_reference_frames(arctic_wav):
    vc = KnnVC()
    reference = arctic_wav[: SR * 2]
    mel, first = vc.convert_mel(arctic_wav, reference, k=1)
    reference_mel = audio.mel_spectrogram(reference)
    assert mel.shape[1] == audio.mel_spectrogram(arctic_wav).shape[1] and int(first.max()) < reference_mel.shape[1]
    assert np.allclose(mel.T.numpy(), np.asarray(reference_mel).T[first.numpy()], atol=1e-4)  # k=1: a copy
    # a clip converted to its own voice picks frames from the same moments (two mel frames share a Whisper frame)
    _, itself = vc.convert_mel(reference, reference, k=1)
    assert np.mean(np.abs(itself.numpy() - np.arange(len(itself))) <= 2) > 0.95
    out = vc.transform(SpeechRequest("convert", arctic_wav, reference, controls={"k": 4}))
    assert out.shape == arctic_wav.shape and np.isfinite(out).all() and np.abs(out).max() > 0.01


def test_the_baselines_serve_their_tasks_everywhere(arctic_wav, tmp_path, capsys):
    from evaluation.systems import parse_system
    from studio.cli import main
    from studio.config import default_systems

    assert {"wiener", "noisereduce"} <= set(pipelines.available_speech_models("enhance"))
    assert "knn_vc" in pipelines.available_speech_models("convert")
    assert set(pipelines.speech_controls("knn_vc")) == {"k"}
    assert parse_system("wf=wiener:floor_db=-20").kind == "speech"
    assert {"wiener=wiener", "knn_vc=knn_vc"} <= set(default_systems())
    with pytest.raises(ValueError, match="does not do voice-conversion"):
        pipelines.convert(arctic_wav, SR, arctic_wav, SR, model="wiener")
    source = tmp_path / "noisy.wav"
    audio.save_audio(source, noisy(arctic_wav, 5.0), SR)
    assert main(["speech", "enhance", str(source), str(tmp_path / "out.wav"), "--model", "wiener",
                 "--floor-db", "-20"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "wiener" and info["floor_db"] == -20
    assert len(audio.load_audio(tmp_path / "out.wav")) == len(arctic_wav)


def test_the_semantic_encoder_reads_past_its_30_second_window(arctic_wav):
    from models.semantic_tokenizer import encode_wavs, semantic_encoder

    long = np.tile(arctic_wav, 9)  # 36 s: two windows, joined
    features = encode_wavs(semantic_encoder(), [long, arctic_wav])
    for wav, feature in zip((long, arctic_wav), features):
        assert abs(len(feature) - 50 * len(wav) / SR) <= 2 and feature.shape[1] == 384
