import os

import numpy as np
import pytest
import soundfile as sf

from models import audio
from models.audio import AudioError
from tests.conftest import tone


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".ogg"])
def test_save_load_round_trip(tmp_path, suffix):
    wav = tone(1.0)
    path = audio.save_audio(tmp_path / f"x{suffix}", wav)
    back = audio.load_audio(path)
    assert back.dtype == np.float32 and back.ndim == 1
    assert abs(len(back) - len(wav)) <= 1
    tolerance = 0.05 if suffix == ".ogg" else 1e-3  # ogg is lossy
    assert np.max(np.abs(back[: len(wav)] - wav[: len(back)])) < tolerance


def test_load_mp3(tmp_path):
    sf.write(tmp_path / "x.mp3", tone(1.0), 22050, format="MP3")
    wav = audio.load_audio(tmp_path / "x.mp3")
    assert abs(len(wav) - 22050) < 2000 and 0.3 < np.max(np.abs(wav)) < 0.7


def test_save_leaves_no_temp_files_and_keeps_old_file_on_failure(tmp_path):
    path = audio.save_audio(tmp_path / "a.wav", tone(0.5))
    before = path.read_bytes()
    with pytest.raises(AudioError, match="Unsupported output format"):
        audio.save_audio(tmp_path / "a.mp4", tone(0.5))
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["a.wav"]


def test_load_resamples_and_downmixes(tmp_path):
    stereo = np.stack([tone(1.0, 16000), tone(1.0, 16000)], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 16000)
    wav = audio.load_audio(tmp_path / "s.wav", sr=22050)
    assert wav.ndim == 1 and abs(len(wav) - 22050) <= 2


def test_pcm_conversion():
    assert audio.to_float32(np.array([-32768, 0, 16384], np.int16)).tolist() == [-1.0, 0.0, 0.5]
    assert audio.to_float32(np.array([0, 128], np.uint8)).tolist() == [-1.0, 0.0]
    assert audio.to_mono(np.zeros((100, 2), np.int16)).shape == (100,)


def test_missing_file():
    with pytest.raises(AudioError, match="not found"):
        audio.load_audio("/no/such/file.wav")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="Could not read audio file bad.wav"):
        audio.load_audio(bad)


def test_empty_file(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 22050)
    with pytest.raises(AudioError, match="empty"):
        audio.load_audio(tmp_path / "empty.wav")


def test_silent_audio(tmp_path):
    sf.write(tmp_path / "silent.wav", np.zeros(22050, np.float32), 22050)
    with pytest.raises(AudioError, match="silent"):
        audio.load_audio(tmp_path / "silent.wav")


def test_non_finite_samples():
    wav = tone(0.5)
    wav[100] = np.nan
    with pytest.raises(AudioError, match="NaN or infinite"):
        audio.prepare_audio(wav, 22050)
    wav[100] = np.inf
    with pytest.raises(AudioError, match="NaN or infinite"):
        audio.check_audio(wav, 22050)


def test_too_long(tmp_path):
    sf.write(tmp_path / "long.wav", tone(3.0, 8000), 8000)
    with pytest.raises(AudioError, match="3.0 s long; the limit is 2 s"):
        audio.load_audio(tmp_path / "long.wav", max_seconds=2)
    assert len(audio.load_audio(tmp_path / "long.wav", max_seconds=None)) > 0


def test_peak_and_loudness_normalization():
    import pyloudnorm

    wav = tone(2.0, amp=0.1)
    assert np.isclose(np.max(np.abs(audio.normalize_peak(wav, 0.9))), 0.9, atol=1e-4)
    out = audio.normalize_loudness(wav, 22050, target_lufs=-20.0)
    assert abs(pyloudnorm.Meter(22050).integrated_loudness(out.astype(np.float64)) + 20.0) < 0.5
    loud = audio.normalize_loudness(tone(2.0, amp=0.9), 22050, target_lufs=0.0)
    assert np.max(np.abs(loud)) <= 0.99 + 1e-6  # limited, never clipped


def test_trim_silence():
    sr = 22050
    wav = np.concatenate([np.zeros(sr), tone(1.0), np.zeros(sr)]).astype(np.float32)
    trimmed = audio.trim_silence(wav, sr, pad_seconds=0.05)
    assert 1.0 <= len(trimmed) / sr < 1.25


def test_like_corpus_trims_and_levels_a_quiet_padded_clip():
    import pyloudnorm

    sr = 22050
    wav = np.concatenate([np.zeros(sr), tone(2.0, amp=0.01), np.zeros(sr)]).astype(np.float32)
    out = audio.like_corpus(wav, sr)
    assert 2.0 <= len(out) / sr < 2.3
    assert abs(pyloudnorm.Meter(sr).integrated_loudness(out.astype(np.float64)) - audio.CORPUS_LUFS) < 0.5


def test_like_corpus_gives_an_abrupt_clip_its_margins_and_keeps_them():
    sr = 22050
    wav = np.concatenate([tone(1.0), np.zeros(int(0.3 * sr))]).astype(np.float32)  # speech from sample 0

    def margins(clip):
        loud = np.flatnonzero(np.abs(clip) > 0.01 * np.abs(clip).max())
        return loud[0] / sr, (len(clip) - 1 - loud[-1]) / sr

    once = audio.like_corpus(wav, sr)
    lead, tail = margins(once)
    assert 0.1 <= lead < 0.13 and 0.1 <= tail < 0.13
    twice = audio.like_corpus(once, sr)
    assert len(twice) == len(once) and np.allclose(twice, once, atol=1e-3)  # finishing again changes nothing
    # speech to the last sample gets its tail; silence and an empty clip come back as they are
    ends = audio.like_corpus(np.concatenate([np.zeros(int(0.5 * sr)), tone(1.0)]).astype(np.float32), sr)
    assert 0.1 <= margins(ends)[1] < 0.13 and 0.1 <= margins(ends)[0] < 0.13
    for quiet in (np.zeros(sr, np.float32), np.zeros(0, np.float32)):
        assert len(audio.trim_silence(quiet, sr, pad_seconds=0.1, fill=True)) == len(quiet)
    with pytest.raises(ValueError, match="mono"):
        audio.trim_silence(np.zeros((2, sr), np.float32), sr)


def test_pause_cut_lands_in_the_last_pause_before_the_limit():
    from models.audio import pause_cut

    sr = 16000
    rng = np.random.default_rng(0)

    def speech(seconds):
        return 0.3 * rng.standard_normal(int(seconds * sr)).astype(np.float32)

    def pause(seconds):
        return np.zeros(int(seconds * sr), np.float32)

    wav = np.concatenate([speech(3), pause(0.4), speech(3), pause(0.3), speech(3), pause(0.5), speech(3)])
    assert 9.7 * sr < pause_cut(wav, sr, 10.0) <= 10 * sr  # inside the pause that starts at 9.7 s
    assert 6.4 * sr < pause_cut(wav, sr, 9.0) < 6.7 * sr  # the last pause that starts before 9 s
    assert 3.0 * sr < pause_cut(wav, sr, 6.0) < 3.4 * sr
    assert pause_cut(wav[: 5 * sr], sr, 10.0) == 5 * sr  # short enough: nothing cut
    flat = speech(12)
    assert 5 * sr <= pause_cut(flat, sr, 10.0) <= 10 * sr  # no pause: the quietest frame of the second half


def test_a_long_reference_is_cut_at_a_pause_and_its_transcript_follows(arctic_wav):
    from models import pipelines

    sr = 22050
    unit = np.concatenate([arctic_wav, np.zeros(int(0.5 * sr), np.float32)])
    sentence = "And you always want to see it in the superlative degree."
    long = np.tile(unit, 8)
    assert len(long) / sr > pipelines.MAX_REFERENCE_SECONDS

    def transcribe(wav):  # an ASR that hears each whole repetition in the audio it is given
        return " ".join(["and you always want to see it in the superlative degree"] * int(round(len(wav) / len(unit))))

    kept, text, cut = pipelines.cut_reference(long, " ".join([sentence] * 8), transcribe)
    reps = int(round(len(kept) / len(unit)))
    assert len(kept) <= pipelines.MAX_REFERENCE_SECONDS * sr and abs(len(kept) - reps * len(unit)) < 0.5 * sr
    assert text == " ".join([sentence] * reps) and cut["transcript_given"]
    assert pipelines.cut_reference(long, None, transcribe)[1] == transcribe(kept)
    short, same, none = pipelines.cut_reference(unit, sentence, transcribe)
    assert short is unit and same == sentence and none is None
