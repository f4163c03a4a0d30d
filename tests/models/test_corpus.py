
import pytest
import soundfile as sf

from models.data import corpus
from models.data import manifest as mf
from models.data.voices import ENGINES, VOICES, CommandEngine, Job, Voice, select_voices

pytestmark = pytest.mark.voices  # every test here synthesizes with the installed engines

# CI installs these (Makefile: APT_TEST and the `corpus` extra); the mini build must use them.
REQUIRED_ENGINES = {"flite", "espeak", "piper", "kokoro"}
TEST_SENTENCES = {f"harvard-{i:03d}" for i in range(601, 721)}


def test_mini_build_end_to_end(mini):
    out, report, _ = mini
    used = {v["engine"] for v in report["voices"]}
    assert REQUIRED_ENGINES <= used, f"engines missing: {REQUIRED_ENGINES - used}"
    rows = mf.read_jsonl(out / "manifest.jsonl")
    assert len(rows) == report["finished"] == report["planned"] - len(report["failed"])
    for row in rows:
        info = sf.info(mf.resolve_audio(out / "manifest.jsonl", row["path"]))
        assert info.samplerate == 22050 and info.channels == 1
        assert abs(info.duration - row["duration"]) < 0.01 and row["duration"] > 0.5
        assert row["normalized_text"] and row["split"] in {"train", "valid", "test", "heldout"}
        if report["text_mode"] == "phoneme":
            assert "ˈ" in row["phonemes"]
    assert report["synthesized_now"]["audio_hours_per_wall_minute"] > 0
    assert (out / "build.json").is_file()


def test_no_test_sentence_in_training(mini):
    rows = mf.read_jsonl(mini[0] / "manifest.jsonl")
    train_texts = {r["normalized_text"] for r in rows if r["split"] == "train"}
    for row in rows:
        text_id = row["id"].rsplit("_", 1)[1]
        assert (text_id in TEST_SENTENCES) == (row["split"] in {"test", "heldout"})
        if row["split"] in {"test", "heldout"}:
            assert row["normalized_text"] not in train_texts
    pools = corpus.sentence_pools()
    assert not {t for t, _ in pools["train"] + pools["valid"]} & TEST_SENTENCES


def test_held_out_speakers_never_train(mini):
    rows = mf.read_jsonl(mini[0] / "manifest.jsonl")
    held_out = {r["speaker"] for r in rows if r["split"] == "heldout"}
    assert len(held_out) >= 2
    assert not held_out & {r["speaker"] for r in rows if r["split"] in {"train", "valid", "test"}}
    # A held-out person must not be reachable through another engine either.
    assert not {v.speaker for v in VOICES if v.held_out} & {v.speaker for v in VOICES if not v.held_out}


def test_eval_lists_resolve(mini):
    out = mini[0]
    rows = {r["id"]: r for r in mf.read_jsonl(out / "manifest.jsonl")}
    families = {name: {rows[e["utt"]]["family"] for e in mf.read_seed_tts(out / "eval" / name)}
               for name in ("tts_heldout.lst", "tts_kokoro.lst")}
    assert families == {"tts_heldout.lst": {"engine"}, "tts_kokoro.lst": {"natural"}}
    for name in ("tts_seen.lst", "tts_heldout.lst", "tts_kokoro.lst"):
        entries = mf.read_seed_tts(out / "eval" / name)
        assert entries
        for entry in entries:
            assert entry["prompt_wav"] != entry["gt_wav"]
            for key in ("prompt_wav", "gt_wav"):
                assert mf.resolve_audio(out / "eval" / name, entry[key]).is_file()
    real = mf.read_jsonl(out / "eval" / "real_speech.jsonl")  # recordings of people, never in the manifest
    assert len(real) >= 10 and all(mf.resolve_audio(out / "eval" / "real_speech.jsonl", r["gt_wav"]).is_file()
                                   for r in real)
    assert not {r["id"] for r in real} & {r["id"] for r in mf.read_jsonl(out / "manifest.jsonl")}
    real_tts = mf.read_jsonl(out / "eval" / "tts_real.jsonl")  # zero-shot TTS on those voices
    by_id = {r["id"]: r for r in real}
    assert len(real_tts) >= 10
    for entry in real_tts:
        prompt = next(r for r in real if r["gt_wav"] == entry["prompt_wav"])
        assert prompt["id"] != entry["id"] and prompt["speaker"] == entry["speaker"] == by_id[entry["id"]]["speaker"]
        assert entry["prompt_text"] == prompt["text"]
    for name in corpus.PAIR_LISTS:  # pseudo-speakers against their source voice, their sibling, themselves
        pairs = mf.read_jsonl(out / "eval" / f"{name}.jsonl")
        assert all(p["gt_wav"] != p["prompt_wav"] and p["text"] != p["prompt_text"] for p in pairs)
        assert all(mf.resolve_audio(out / "eval" / f"{name}.jsonl", p[k]).is_file() for p in pairs
                   for k in ("gt_wav", "prompt_wav"))
    assert mf.read_jsonl(out / "eval" / "pseudo_source.jsonl")


def test_resume_produces_the_same_manifest(tmp_path):
    voices = ["flite-kal16", "espeak-en-us-m1", "flite-rms"]  # deterministic engines
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    corpus.build(whole, profile="mini", voices=voices, workers=2, log=lambda _: None)
    corpus.build(resumed, profile="mini", voices=voices, workers=2, log=lambda _: None)
    # An interrupted build: some files and the manifest never got written.
    wavs = sorted((resumed / "wavs").rglob("*.wav"))
    for path in wavs[::2]:
        path.unlink()
    (resumed / "manifest.jsonl").unlink()
    kept = {p: p.stat().st_mtime_ns for p in wavs[1::2]}
    report = corpus.build(resumed, profile="mini", voices=voices, workers=2, log=lambda _: None)
    assert report["synthesized_now"]["utterances"] == len(wavs[::2])
    assert (resumed / "manifest.jsonl").read_text() == (whole / "manifest.jsonl").read_text()
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # finished files untouched


def test_clips_finished_under_an_older_rule_are_refinished_and_lose_their_caches(tmp_path):
    import numpy as np

    from models import audio

    corpus.build(tmp_path, profile="mini", voices=["espeak-en-us-m1"], workers=2, log=lambda _: None)
    folder = next((tmp_path / "wavs").glob("*/"))
    assert (folder / corpus.FINISH_MARK).read_text().strip() == audio.FINISH
    clips = sorted(folder.glob("*.wav"))
    # An older rule: trimmed only, so the speech starts at the first sample.
    wav, sr = sf.read(clips[0], dtype="float32")
    loud = np.flatnonzero(np.abs(wav) > 0.05 * np.abs(wav).max())
    sf.write(clips[0], wav[loud[0]:], sr, subtype="PCM_16")
    (folder / corpus.FINISH_MARK).write_text("an older rule\n")
    stale, kept = (tmp_path / "cache" / "mel" / f"{folder.name}_{clips[i].stem}.npy" for i in (0, 1))
    for path in (stale, kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.zeros(3))
    untouched = {p: p.stat().st_mtime_ns for p in clips[1:]}
    logged = []
    corpus.build(tmp_path, profile="mini", voices=["espeak-en-us-m1"], workers=2, log=logged.append)
    wav, sr = sf.read(clips[0], dtype="float32")
    assert np.flatnonzero(np.abs(wav) > 0.05 * np.abs(wav).max())[0] / sr >= 0.09
    assert not stale.exists() and kept.exists()
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items())
    row = next(r for r in mf.read_jsonl(tmp_path / "manifest.jsonl") if r["path"].endswith(clips[0].name)
               and folder.name in r["path"])
    assert abs(row["duration"] - len(wav) / sr) < 0.01
    assert (folder / corpus.FINISH_MARK).read_text().strip() == audio.FINISH
    assert any("1 clips changed" in line for line in logged)


def test_a_build_of_some_engines_keeps_the_others_clips_in_the_manifest(tmp_path):
    voices = ["flite-kal16", "espeak-en-us-m1"]
    corpus.build(tmp_path, profile="mini", voices=voices, workers=2, log=lambda _: None)
    whole = (tmp_path / "manifest.jsonl").read_text()
    report = corpus.build(tmp_path, profile="mini", voices=voices, engines=["flite"], workers=2, log=lambda _: None)
    assert (tmp_path / "manifest.jsonl").read_text() == whole and report["complete"]
    assert {r["engine"] for r in mf.read_jsonl(tmp_path / "manifest.jsonl")} == {"flite", "espeak"}


def test_failing_sentence_is_reported_not_fatal(tmp_path):
    class Failing(CommandEngine):
        name, binary = "failing", "false"

        def command(self, job, out):
            return ["false"], None

    voice = Voice("failing", "x", "x", "m")
    results = Failing().synthesize([Job("a", voice, "hello"), Job("b", voice, "world")], tmp_path)
    assert set(results) == {"a", "b"} and all(isinstance(r, str) for r in results.values())


def test_missing_engine_is_reported_and_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(ENGINES["espeak"], "available", lambda: False)
    logged = []
    report = corpus.build(tmp_path / "c", profile="mini", voices=["flite-kal16", "espeak-en-us-m1"],
                          workers=1, log=logged.append)
    assert any("espeak is not installed" in line and "apt-get install -y espeak-ng" in line for line in logged)
    assert report["missing_engines"] == ["espeak"] and report["finished"] > 0


def test_voice_selection():
    assert {v.engine for v in select_voices(["flite"])} == {"flite"}
    assert {v.name for v in select_voices(["slt"])} >= {"flite-slt", "festival-cmu_us_slt_arctic_hts"}
    with pytest.raises(ValueError, match="unknown voices: nobody"):
        select_voices(["nobody"])


def test_plan_is_seeded_and_sized():
    voices = select_voices(["flite-kal16", "flite-awb", "flite-rms"])
    first = corpus.plan(corpus.PROFILES["default"], voices, seed=3, train_hours=0.5)
    assert first == corpus.plan(corpus.PROFILES["default"], voices, seed=3, train_hours=0.5)
    assert first != corpus.plan(corpus.PROFILES["default"], voices, seed=4, train_hours=0.5)
    train = [r for r in first if r["split"] == "train"]
    estimated = sum(len(r["text"]) / corpus.CHARS_PER_SECOND for r in train) / 3600
    assert 0.5 <= estimated < 0.55  # the quota is met, overshooting by one sentence per voice at most
    assert {r["speaker"] for r in train} == {"kal", "awb"}


@pytest.mark.parametrize("kwargs, message", [({"train_hours": 0}, "--hours must be positive"),
                                             ({"natural_hours": -1}, "--kokoro-hours must be positive"),
                                             ({"engines": ["kokoro", "nobody"]}, "unknown engines: nobody"),
                                             ({"workers": 0}, "--workers must be at least 1")])
def test_bad_build_options(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        corpus.build(tmp_path / "c", profile="mini", log=lambda _: None, **kwargs)
    with pytest.raises(ValueError, match="unknown profile 'v9'"):
        corpus.build(tmp_path / "c", profile="v9", log=lambda _: None)


def test_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(ValueError, match="not a folder"):
        corpus.build(tmp_path / "file", profile="mini", log=lambda _: None)
    assert (tmp_path / "file").read_text() == "keep me"
