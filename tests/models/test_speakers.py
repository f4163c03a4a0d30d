"""Pseudo-speakers, recording conditions and the real-speech set: fast checks, no engine runs."""

import math

import numpy as np
import pytest

from models import audio
from models.data import corpus, speakers
from models.data import manifest as mf
from models.data.augment import Conditions, apply_conditions
from models.data.voices import VOICES, SpeakerTransform
from tests.conftest import REPO, tone

SR = audio.SAMPLE_RATE


def dominant_hz(wav: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / SR)[spectrum.argmax()])


def test_a_pseudo_speaker_is_the_same_person_on_every_build():
    first = speakers.pseudo_voices(list(VOICES), 2)
    again = speakers.pseudo_voices(list(VOICES), 2)
    assert first == again and len({v.speaker for v in first}) == len(first) == 2 * len(VOICES)
    transforms = [v.transform for v in first]
    assert len(set(transforms)) == len(transforms)  # every pseudo-speaker its own person
    assert all(abs(math.log(t.formant)) >= speakers.MIN_FORMANT_SHIFT for t in transforms)
    wav = tone(1.0) + 0.1 * tone(1.0, freq=1800.0)
    t = transforms[0]
    assert np.array_equal(speakers.apply_transform(wav, SR, t, seed=5), speakers.apply_transform(wav, SR, t, seed=5))


def test_the_formant_resampling_is_compensated_by_the_engine_request():
    """The engine is asked for F0 and duration that the resampling then moves to the intended ones."""
    t = SpeakerTransform(formant=1.1, pitch=2.0, rate=0.95)
    pseudo = speakers.pseudo_voices([v for v in VOICES if v.name == "espeak-en-us-m1"], 1)[0]
    pseudo = type(pseudo)(**{**pseudo.__dict__, "transform": t})
    stretch, semitones = speakers.engine_request(pseudo, rate=1.0, pitch=0.5)
    engine_out = tone(1.0 * stretch, freq=200.0 * 2 ** (semitones / 12))  # what such an engine gives
    out = speakers.apply_transform(engine_out, SR, t, seed=0)
    assert abs(len(out) / SR - 0.95) < 0.01  # duration: the rate asked for
    assert abs(dominant_hz(out) - 200.0 * 2 ** (2.5 / 12)) < 3.0  # F0: the voice's, moved by pitch + jitter
    lower = speakers.apply_transform(tone(1.0, freq=1000.0), SR, SpeakerTransform(formant=0.9), seed=0)
    assert abs(dominant_hz(lower) - 900.0) < 3.0  # a longer tract: every frequency lower


def test_the_corpus_levels_a_pseudo_speaker_like_any_voice(tmp_path):
    raw = tmp_path / "raw.wav"
    audio.save_audio(raw, tone(2.0, freq=180.0) + 0.2 * tone(2.0, freq=2500.0, amp=0.2), SR)
    voice = speakers.pseudo_voices([VOICES[0]], 1)[0]
    corpus._finish(raw, tmp_path / "out.wav", voice)
    out = audio.load_audio(tmp_path / "out.wav", SR, max_seconds=None)
    plain = tmp_path / "plain.wav"
    corpus._finish(raw, plain, VOICES[0])
    import pyloudnorm

    for path in (tmp_path / "out.wav", plain):
        level = pyloudnorm.Meter(SR).integrated_loudness(audio.load_audio(path, SR, max_seconds=None))
        assert abs(level - audio.CORPUS_LUFS) < 0.5
    margins = 2 * (int(0.1 * SR) + 512)  # 0.1 s each side of the first and last loud (centred) 1024-sample window
    assert abs(len(out) - (2.0 * SR / voice.transform.formant + margins)) < 0.01 * SR


def test_no_held_out_voice_or_its_pseudo_speakers_train():
    profile = corpus.PROFILES["default"]
    voices = profile.voices()
    rows = corpus.plan(profile, voices, seed=0)
    held_out = {v.speaker for v in voices if v.held_out}
    sources_held_out = {v.name for v in VOICES if v.held_out}
    assert {v.speaker for v in voices if v.source in sources_held_out} <= held_out  # pseudo of held-out: held out
    trained = {r["speaker"] for r in rows if r["split"] in ("train", "valid", "test")}
    assert not trained & held_out
    assert not {r["source_voice"] for r in rows if r["split"] == "train" and "source_voice" in r} & sources_held_out
    assert len({r["speaker"] for r in rows if r["split"] == "train"}) >= 100  # the scale the corpus promises
    assert len({r["speaker"] for r in rows if r["split"] == "heldout"}) > len({v.speaker for v in VOICES[:19]
                                                                                if v.held_out})
    pseudo_rows = [r for r in rows if "transform" in r]
    assert pseudo_rows and all(r["transform"]["formant"] > 0 and r["source_voice"] for r in pseudo_rows)


@pytest.mark.parametrize("seed", range(12))
def test_recording_conditions_keep_audio_finite_in_range_and_length(seed):
    rng = np.random.default_rng(seed)
    loud = np.clip(tone(1.5, amp=0.99) + 0.3 * rng.standard_normal(int(1.5 * SR)), -1, 1).astype(np.float32)
    always = Conditions(probability=1.0, highpass=(1.0, 50.0, 300.0), lowpass=(1.0, 3400.0, 8000.0),
                        reverb=(1.0, 0.1, 0.4), noise=(1.0, 25.0, 50.0), level_db=(6.0, 6.0))
    for wav in (loud, np.zeros(SR, np.float32), tone(0.01)):
        out = apply_conditions(wav, SR, np.random.default_rng(seed), always)
        assert out.shape == wav.shape and out.dtype == np.float32
        assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
    changed = apply_conditions(tone(1.0), SR, np.random.default_rng(seed), always)
    assert not np.allclose(changed, tone(1.0), atol=1e-3)
    clean = Conditions(probability=0.0)
    assert np.array_equal(apply_conditions(tone(1.0), SR, np.random.default_rng(seed), clean), tone(1.0))


def test_the_real_speech_set_parses_and_every_clip_resolves():
    from evaluation.systems import builtin_testsets, read_items

    manifest = REPO / "assets" / "testsets" / "real_speech.jsonl"
    built = REPO / "data" / "corpus" / "eval" / "real_speech.jsonl"  # a built corpus's copy takes the name
    assert builtin_testsets()["real_speech"] == (built if built.is_file() else manifest)
    items = read_items(manifest)
    assert len(items) >= 10 and len({i.speaker for i in items}) >= 4
    for item in items:
        assert item.text and item.reference.is_file()
        wav = audio.load_audio(item.reference, SR, max_seconds=None)
        assert len(wav) > 0.5 * SR
    rows = mf.read_jsonl(manifest)
    assert all(row["source"] for row in rows)  # each clip says which package shipped it
    assert (REPO / "assets" / "audio" / "real" / "README.md").is_file()


def test_conditioned_mels_are_drawn_afresh_and_never_cached(tmp_path):
    import torch

    from models.data.augment import MEL_CONDITIONS
    from models.data.dataset import MEL, SpeechDataset

    audio.save_audio(tmp_path / "a.wav", tone(1.0) + 0.2 * tone(1.0, freq=1500.0, amp=0.3), SR)
    mf.write_jsonl(tmp_path / "manifest.jsonl", [{"id": "a", "speaker": "s", "path": "a.wav", "split": "train",
                                                   "duration": 1.0, "text": "a", "normalized_text": "a"}])
    data = SpeechDataset(tmp_path / "manifest.jsonl", feature=MEL_CONDITIONS, cache_dir=tmp_path / "cache")
    torch.manual_seed(0)
    draws = [data[0]["features"] for _ in range(6)]
    assert all(d.shape == draws[0].shape for d in draws) and all(torch.isfinite(d).all() for d in draws)
    assert len({tuple(d.flatten()[:50].tolist()) for d in draws}) > 1  # a new condition per read
    assert not (tmp_path / "cache").exists()
    clean = SpeechDataset(tmp_path / "manifest.jsonl", feature=MEL, cache_dir=tmp_path / "cache")[0]["features"]
    assert clean.shape == draws[0].shape and (tmp_path / "cache" / "mel" / "a.npy").is_file()


def test_a_resumed_build_remakes_a_pseudo_speaker_whose_transform_changed(tmp_path):
    from dataclasses import replace

    voice = speakers.pseudo_voices([VOICES[0]], 1)[0]
    folder = tmp_path / "wavs" / voice.name
    folder.mkdir(parents=True)
    (folder / "a.wav").write_bytes(b"x")
    corpus._forget_stale_pseudo_speaker(tmp_path, voice, log=lambda _: None)  # first sight: recorded, kept
    assert (folder / "a.wav").is_file() and (folder / "transform.json").is_file()
    corpus._forget_stale_pseudo_speaker(tmp_path, voice, log=lambda _: None)  # unchanged: kept
    assert (folder / "a.wav").is_file()
    changed = replace(voice, transform=replace(voice.transform, breath=voice.transform.breath + 0.01))
    said = []
    corpus._forget_stale_pseudo_speaker(tmp_path, changed, log=said.append)
    assert not (folder / "a.wav").exists() and "transform changed" in said[0]


def test_pair_lists_enroll_another_sentence_of_the_right_voice(tmp_path):
    rows = []
    for voice, source in (("v", None), ("v-p1", "v"), ("v-p2", "v")):
        for k in (601, 602, 603):
            row = {"id": f"{voice}_harvard-{k}", "speaker": voice, "split": "test", "path": f"wavs/{voice}/{k}.wav",
                   "normalized_text": f"sentence {k}"}
            rows.append({**row, "source_voice": source, "transform": {}} if source else row)
    corpus._write_speaker_lists(tmp_path, rows)
    lists = {name: mf.read_jsonl(tmp_path / "eval" / f"{name}.jsonl") for name in corpus.PAIR_LISTS}
    assert len(lists["pseudo_source"]) == len(lists["pseudo_sibling"]) == len(lists["pseudo_self"]) == 6
    assert len(lists["source_self"]) == 3  # the source voice once, not once per pseudo-speaker
    for entry in lists["pseudo_source"]:
        assert entry["gt_wav"].startswith("../wavs/v-p") and entry["prompt_wav"].startswith("../wavs/v/")
    for entry in lists["pseudo_sibling"]:
        scored, enrolled = entry["gt_wav"].split("/")[2], entry["prompt_wav"].split("/")[2]
        assert {scored, enrolled} == {"v-p1", "v-p2"}
    for entries in lists.values():
        assert all(e["text"] != e["prompt_text"] for e in entries)  # never the same words
