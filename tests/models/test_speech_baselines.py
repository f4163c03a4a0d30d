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


@pytest.mark.parametrize("name", ["wiener", "noisereduce", "deepfilternet"])
def test_an_enhancement_baseline_raises_si_sdr_and_keeps_the_length(name, arctic_wav):
    mixture = noisy(arctic_wav, 5.0)
    out = BASELINES[name]().transform(SpeechRequest("enhance", mixture))
    assert out.shape == mixture.shape and np.isfinite(out).all()
    # time-aligned with the input (deepfilternet's delay removed), and cleaner (dB; wiener gains 3.6 here)
    assert si_sdr(arctic_wav, out, SR) > si_sdr(arctic_wav, mixture, SR) + 0.5


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


def test_long_inputs_go_in_pieces_cut_at_pauses_and_join_without_a_seam():
    from models.pipelines.speech import FADE_SECONDS, in_chunks, pause_cuts

    wav = np.random.default_rng(0).standard_normal(50 * SR).astype(np.float32) * 0.1
    pauses = [int(t * SR) for t in range(7, 50, 7)]  # 0.3 s of silence every 7 s
    for start in pauses:
        wav[start:start + int(0.3 * SR)] = 0
    cuts = pause_cuts(wav, SR, 20.0)
    assert len(cuts) == 3 and all(any(p <= c < p + int(0.3 * SR) for p in pauses) for c in cuts)
    heard = []
    same = in_chunks(lambda piece: heard.append(len(piece)) or piece, wav, SR, 20.0)
    assert np.allclose(same, wav, atol=1e-6) and len(heard) == 4 and max(heard) <= (20 + FADE_SECONDS) * SR
    tone = 0.5 * np.sin(2 * np.pi * 200 * np.arange(50 * SR) / SR).astype(np.float32)  # no pause to cut at
    gains = iter([1.0, 0.5, 1.0, 0.5])  # pieces that come back changed differently still join without a click
    varied = in_chunks(lambda piece: piece * next(gains), tone, SR, 20.0)
    assert len(varied) == len(tone) and np.abs(np.diff(varied)).max() < 1.1 * np.abs(np.diff(tone)).max()
    assert in_chunks(lambda piece: piece[: len(piece) // 2], wav[: 5 * SR], SR, 20.0).shape == (5 * SR // 2,)


def test_the_speech_command_runs_a_folder_or_manifest_as_a_resumable_batch(arctic_wav, tmp_path, capsys):
    from studio.cli import main

    folder = tmp_path / "noisy"
    for seed in (1, 2):
        audio.save_audio(folder / f"take{seed}.wav", noisy(arctic_wav[: 2 * SR], 5.0, seed), SR)
    out = tmp_path / "clean"
    assert main(["speech", "enhance", str(folder), str(out), "--model", "wiener", "--seed", "5"]) == 0
    capsys.readouterr()
    record = [json.loads(line) for line in (out / "speech.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in record) == ["take1", "take2"] and {r["seed"] for r in record} == {5, 6}
    assert all(len(audio.load_audio(out / r["audio"])) == 2 * SR for r in record)
    assert main(["speech", "enhance", str(folder), str(out), "--model", "wiener"]) == 0  # resumed: nothing to do
    assert '"skipped": 2' in capsys.readouterr().out
    manifest = tmp_path / "vc.jsonl"
    rows = [{"id": "a", "source": str(folder / "take1.wav"), "reference": str(folder / "take2.wav")},
            {"id": "b", "source": str(folder / "take2.wav")}]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["speech", "convert", str(manifest), str(tmp_path / "vc")]) == 2
    assert "b has none (give --voice" in capsys.readouterr().err
    assert main(["speech", "convert", str(manifest), str(tmp_path / "vc"), "--voice", str(folder / "take1.wav"),
                 "--k", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "vc").glob("*.wav")) == ["a.wav", "b.wav"]
