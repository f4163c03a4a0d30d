"""Handlers of the studio's tabs, called directly (the browser tests drive the same code)."""

import json
from pathlib import Path

import pytest


@pytest.fixture
def ab_config(tmp_path):
    """Three tone prompts with ground truth and a folder system (no model runs: fast), and a
    text-only set."""
    from studio.bench import tone_testset

    config = tone_testset(tmp_path, prompts=3)
    (tmp_path / "text.jsonl").write_text(json.dumps({"id": "t0", "text": "only words"}) + "\n")
    config.testsets = {"set": config.testsets["tones"], "words": str(tmp_path / "text.jsonl")}
    return config


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_ab_match_unlocks_after_both_plays_and_stores_one_vote(ab_config):
    from studio.tabs.listen import RANDOM, Arena, reveal

    arena = Arena(ab_config)
    arena.clock = clock = Clock()
    assert arena.prompts("set")[0] == RANDOM and len(arena.prompts("set")) == 4
    match = arena.new_match("set", "u1 | tone 1", "ann")
    assert match["key"] == "u1" and {match["a"], match["b"]} == {"gt", "other"}
    assert "gt" not in reveal(match) and "other" not in reveal(match)  # hidden until the vote
    with pytest.raises(ValueError, match="Play both clips"):
        arena.vote(match, "A", "ann")
    match = arena.play(match, "A", "ann")
    assert not arena.ready(match, "ann")
    match = arena.play(match, "B", "ann")
    assert arena.ready(match, "ann") and not arena.ready(match, "bob")
    with pytest.raises(ValueError, match="Listen to both clips"):  # two 1 s clips: 1 s of listening first
        arena.vote(match, "A", "ann")
    clock.now += 1.0
    match = arena.vote(match, "A", "ann")
    again = arena.vote(match, "B", "ann")  # a second click changes nothing, and says so
    assert again["voted"] == "A" and "the first vote stands" in reveal(again)
    assert f"**A** was `{match['a']}`" in reveal(match) and "Vote stored" in reveal(match)
    assert not arena.ready(match, "ann")  # locked after the vote
    board = Arena(ab_config).board()  # a new instance (a restart) reads the stored vote
    assert sorted(board["system"]) == ["gt", "other"] and board["votes"].tolist() == [1, 1]
    winner = board.loc[board["system"] == match["a"]].iloc[0]
    assert winner["win_rate"] == 1.0
    assert open(arena.export()).read().count("\n") == 2  # header + one vote


def test_ab_the_server_checks_plays_votes_and_rates_per_visitor(ab_config):
    """The play lock, the vote and its rate limits hold against a client that calls the endpoints itself."""
    import numpy as np
    import soundfile as sf

    from studio.tabs.listen import SERVED_GAIN_DB, Arena

    ab_config.arena_vote_gap_s, ab_config.arena_votes_per_hour = 5.0, 2
    arena = Arena(ab_config)
    arena.clock = clock = Clock()

    def listened(visitor):
        match = arena.new_match("set", "u0 | tone 0", visitor)
        for side in "AB":
            match = arena.play(match, side, visitor)
        clock.now += 1.0
        return match

    first = arena.new_match("set", "u0 | tone 0", "ann")
    second = arena.new_match("set", "u0 | tone 0", "ann")
    servings = [{m[side]: sf.read(path)[0] for side, path in zip("ab", m["paths"])} for m in (first, second)]
    assert len(set(first["paths"] + second["paths"])) == 4
    for system in ("gt", "other"):  # the same system's clip differs in bytes per serving, but not audibly:
        once, twice = servings[0][system], servings[1][system]  # two gains at most 2 x SERVED_GAIN_DB apart
        bound = np.abs(once).max() * (10 ** (2 * SERVED_GAIN_DB / 20) - 1) + 1e-3
        assert once.tobytes() != twice.tobytes() and abs(once - twice).max() < bound < 0.05

    with pytest.raises(ValueError, match="not served to you"):
        arena.play(first, "A", "bob")  # another visitor cannot unlock or vote on ann's pair
    match = listened("ann")
    with pytest.raises(ValueError, match="not served to you"):
        arena.vote(match, "A", "bob", "10.0.0.2")
    arena.vote(match, "A", "ann", "10.0.0.1")
    match = listened("ann")
    with pytest.raises(ValueError, match="One vote every 5 s"):
        arena.vote(match, "A", "ann", "10.0.0.1")
    clock.now += 5.0
    arena.vote(match, "B", "ann", "10.0.0.1")
    with pytest.raises(ValueError, match="This network has cast 2 votes"):  # a new session, the same address
        arena.vote(listened("carl"), "A", "carl", "10.0.0.1")
    arena.vote(listened("dora"), "A", "dora", "10.0.0.3")
    clock.now += 3601
    arena.vote(listened("carl"), "A", "carl", "10.0.0.1")  # the hour has passed
    assert len(arena.store.rows()) == 4


def test_ab_refuses_what_it_cannot_compare(ab_config):
    from studio.tabs.listen import Arena

    arena = Arena(ab_config)
    with pytest.raises(ValueError, match="fewer than two A/B systems"):
        arena.new_match("words", None)  # text only: neither ground truth nor the folder has audio
    with pytest.raises(ValueError, match="no prompt 'zz'"):
        arena.new_match("set", "zz | nothing")
    with pytest.raises(ValueError, match="unknown test set"):
        arena.new_match("nope", None)
    with pytest.raises(ValueError, match="Start a comparison"):
        arena.vote(None, "A")
    with pytest.raises(ValueError, match="expired"):
        arena.vote({"match": "0" * 32}, "A")


@pytest.mark.slow
def test_arena_load_20_concurrent_voters_lose_and_duplicate_nothing():
    """The bounded loopback load test of `speech-studio bench arena`, smaller: 20 voters x 2 votes,
    each vote sent twice."""
    from studio.bench import arena_load

    result = arena_load(voters=20, votes=2, prompts=3)
    assert result["error_count"] == 0, result["errors"]
    assert result["acknowledged"] == result["stored"] == 40
    assert result["duplicated"] == 0 and result["lost"] == 0 and result["outcomes_match"]


def test_evaluate_runs_the_bench_reports_and_resumes(ab_config):
    from studio.tabs.evaluate import evaluate, plot

    seen = []
    args = ("set", None, ab_config.systems, "", ["stoi", "sisdr"], 3, "first", False)
    updates = list(evaluate(ab_config, *args, progress=lambda fraction, desc: seen.append(fraction)))
    table, status, menu, folder, reports, chart, name = updates[-1]
    assert sorted(table["system"]) == ["gt", "other"] and {"stoi", "si_sdr"} <= set(table.columns)
    assert table.loc[table["system"] == "gt", "stoi"].iloc[0].startswith("1.000")  # gt against itself
    assert "Done: 12 results" in status and all(0 <= f <= 1 for f in seen)
    assert [Path(p).name for p in reports] == ["first.csv", "first.html"] and all(Path(p).is_file() for p in reports)
    assert name == "first" and not any(str(ab_config.data_dir) in p for p in reports)  # served copies only
    assert chart is not None and plot(folder, "si_sdr") is not None and menu["choices"]
    assert menu["value"] != "rtf"  # the chart opens on a quality metric
    with pytest.raises(ValueError, match="tick Resume"):
        list(evaluate(ab_config, *args))
    resumed = list(evaluate(ab_config, *args[:-1], True))[-1]
    assert "Done: 12 results" in resumed[1]  # nothing redone, nothing lost
    with pytest.raises(ValueError, match="run name"):
        list(evaluate(ab_config, *args[:6], "../escape", False))
    with pytest.raises(ValueError, match="at least one metric"):
        list(evaluate(ab_config, "set", None, ["gt"], "", [], 3, "x", False))


def test_a_run_whose_page_closed_stops_at_its_next_unit(ab_config, monkeypatch):
    """Gradio closes a handler's generator when the visitor leaves; the run in the worker thread stops
    too (it went on for 11 minutes), keeping what it wrote for a resume."""
    import time

    from evaluation import runner
    from evaluation.results import latest_rows, read_results
    from studio.common import RunFollower
    from studio.tabs.evaluate import plan

    slow = runner._sample
    monkeypatch.setattr(runner, "_sample", lambda *a: (time.sleep(0.3), slow(*a))[1])
    monkeypatch.setattr(RunFollower, "POLL_SECONDS", 0.1)
    run = plan(ab_config, "set", None, ab_config.systems, "", ["stoi", "sisdr"], 3, "closed", False)
    follow = RunFollower(run, lambda *a, **k: None)
    steps = follow.steps
    next(steps)
    steps.close()  # what Gradio does when the page is closed
    time.sleep(1.0)
    written = len(latest_rows(read_results(run.out)))
    time.sleep(1.0)
    assert written == len(latest_rows(read_results(run.out))) < follow.total


def test_cfg_lab_sweeps_scales_and_seeds_through_the_bench(sled_run, arctic_path, tmp_path):
    from evaluation.sweep import parse_scales
    from studio.config import StudioConfig
    from studio.tabs.cfg_lab import cell_label, run_sweep

    config = StudioConfig(data_dir=tmp_path, testsets={}, systems=[], model_roots=[str(sled_run)])
    updates = list(run_sweep(config, str(sled_run), "Guidance changes speech.", str(arctic_path),
                             "and you always want to see it in the superlative degree", "2, 1", 2, ["sim"],
                             progress=lambda *a, **k: None))
    status, grid, points, figure, files = updates[-1]
    assert "2 CFG values x 2 seeds" in status
    assert [(r["cfg"], r["item"]) for r in grid] == [(1.0, "seed0"), (1.0, "seed1"), (2.0, "seed0"), (2.0, "seed1")]
    assert all(Path(r["audio"]).is_file() and -1 <= r["sim"] <= 1 for r in grid)
    assert points["cfg"].tolist() == [1.0, 2.0] and (points["metric"] == "sim").all()
    assert len(figure.data) == 1 and all(Path(f).is_file() for f in files)
    assert all(Path(f).name.startswith("cfg_lab-") for f in files)
    assert all(len(str(v)) <= 8 for v in points.select_dtypes("number").to_numpy().ravel())  # rounded for reading
    assert cell_label(grid[0]).startswith("CFG 1 · seed0 · sim ")
    assert parse_scales("3 1,1.5") == [1.0, 1.5, 3.0]
    with pytest.raises(ValueError, match="numbers"):
        parse_scales("1, two")
    with pytest.raises(ValueError, match="CFG values x seeds"):
        list(run_sweep(config, str(sled_run), "x", None, None, "1 2 3 4 5 6 7", 10, ["wer"]))
    with pytest.raises(ValueError, match="SIM compares each output with a reference voice"):
        list(run_sweep(config, str(sled_run), "Some words.", None, None, "1, 2", 1, ["wer", "sim"]))


def test_latent_explorer_encodes_plots_and_plays_a_point(ab_config):
    from studio.tabs.latents import explore, utterance_audio, views

    updates = list(explore(ab_config, "set", ab_config.systems, 3, "flow_vae", "lat", progress=lambda *a, **k: None))
    status, stats, menu, figure, utterances, run, _name = updates[-1]
    assert "6 utterances encoded" in status and "no real speech" not in status
    assert sorted(stats["system"]) == ["gt", "other"] and stats["energy distance to gt"].notna().sum() == 1
    titles = menu["choices"]
    assert any("per-dimension mean" in t for t in titles) and any("PCA" in t for t in titles)
    assert figure is not None and set(views(run)) == set(titles)
    choice = utterances["choices"][0]
    assert Path(utterance_audio(run, choice)).is_file()
    with pytest.raises(ValueError, match="not a latent or token codec"):
        list(explore(ab_config, "set", ab_config.systems, 3, "vocoder", "lat2"))
    # the same run name again, asking for less: only what was asked for is shown, not the earlier run's
    status, stats, _, _, utterances, run, _ = list(explore(ab_config, "set", ["gt"], 1, "flow_vae", "lat",
                                                           progress=lambda *a, **k: None))[-1]
    assert "1 utterances encoded" in status and stats["system"].tolist() == ["gt"]
    assert utterances["choices"] == ["gt | u0"]
    with pytest.raises(ValueError, match="no utterance"):
        utterance_audio(run, "other | u0")
    status = list(explore(ab_config, "set", [ab_config.systems[1]], 2, "flow_vae", "lat3",
                          progress=lambda *a, **k: None))[-1][0]
    assert "distances are to `other`, not to real speech" in status  # said, when there is no gt to compare to


def test_cfg_lab_refuses_text_it_cannot_speak_before_running(tmp_path):
    from studio.config import StudioConfig
    from studio.tabs.cfg_lab import run_sweep

    config = StudioConfig(data_dir=tmp_path, testsets={}, systems=[])
    with pytest.raises(ValueError, match="no speakable words"):
        list(run_sweep(config, "sled", "你好，世界。今天天气很好", None, None, "1, 2", 1, ["wer"]))
    assert not (tmp_path / "cfg_lab").exists()  # nothing ran


def test_ab_skips_a_system_that_fails_on_the_prompt_and_logs_it(ab_config, caplog):
    """A pair is made before it is shown: a system that gives no audio is left out and logged."""
    import numpy as np

    from models import audio
    from studio.tabs.listen import Arena

    root = Path(ab_config.testsets["set"]).parent
    broken = root / "broken"
    broken.mkdir()
    audio.save_audio(broken / "u0.wav", np.zeros(22050, np.float32))  # silent: refused when loaded
    ab_config.systems = [*ab_config.systems, f"broken={broken}"]
    arena = Arena(ab_config)
    arena.rng = np.random.default_rng(0)
    with caplog.at_level("WARNING"):
        pairs = [arena.new_match("set", "u0 | tone 0") for _ in range(8)]
    assert all({m["a"], m["b"]} == {"gt", "other"} for m in pairs)
    assert all(Path(p).is_file() for m in pairs for p in m["paths"])
    assert any("broken gave no audio for set/u0" in record.getMessage() for record in caplog.records)
    ab_config.systems = ["gt", f"broken={broken}"]
    with pytest.raises(ValueError, match="no pair could be made"):
        Arena(ab_config).new_match("set", "u0 | tone 0")


def test_settings_get_the_widget_their_range_calls_for():
    import gradio as gr

    from models.roles import Control
    from studio.tabs.synthesize import setting_widget

    with gr.Blocks():
        assert isinstance(setting_widget(Control("Choice", 0, 1, 1, 1)), gr.Checkbox)
        seed = setting_widget(Control("Voice seed", 0, 2**32 - 1, 0, 1))
        assert isinstance(seed, gr.Number) and seed.maximum == 2**32 - 1
        assert isinstance(setting_widget(Control("Temperature", 0.0, 1.5, 1.0, 0.05)), gr.Slider)
    with pytest.raises(ValueError, match="whole number"):
        Control("Voice seed", 0, 2**32 - 1, 0, 1).check("voice_seed", 3.7)


def test_a_setting_two_models_declare_takes_the_selected_models_range_and_default(monkeypatch):
    """KALL-E and Metis both declare a temperature, with different ranges and defaults: the widget follows the
    model chosen, never the other's."""
    from models.roles import Control
    from studio.tabs import synthesize as tab

    declared = {"a": {"temperature": Control("Temperature", 0.0, 1.5, 1.0, 0.05)},
                "b": {"temperature": Control("Temperature", 0.0, 2.0, 0.9, 0.05),
                      "top_k": Control("Top-k", 0, 1024, 20, 1)}}
    monkeypatch.setattr(tab.pipelines, "tts_controls", lambda model: declared[model])
    monkeypatch.setattr(tab, "sampling_names", lambda: ["temperature", "top_k"])
    monkeypatch.setattr(tab, "capabilities", lambda model: frozenset())
    monkeypatch.setattr(tab, "fits_voices", lambda model: False)
    temperature, top_k, *_ = tab.visible_controls("a")
    assert (temperature["maximum"], temperature["value"]) == (1.5, 1.0) and not top_k["visible"]
    temperature, top_k, *_ = tab.visible_controls("b")
    assert (temperature["maximum"], temperature["value"]) == (2.0, 0.9)
    assert top_k["visible"] and (top_k["maximum"], top_k["value"], top_k["step"]) == (1024, 20, 1)


def test_ab_on_a_speech_to_speech_set_serves_what_the_systems_were_given(ab_config, tmp_path):
    import numpy as np

    from models import audio
    from studio.tabs.listen import Arena

    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(audio.SAMPLE_RATE) / audio.SAMPLE_RATE)
    noisy = tone + 0.05 * np.random.default_rng(0).standard_normal(len(tone))
    audio.save_audio(tmp_path / "clean.wav", tone)
    audio.save_audio(tmp_path / "noisy.wav", noisy)
    (tmp_path / "se.jsonl").write_text(json.dumps({"id": "s0", "text": "a tone", "clean": "clean.wav",
                                                   "noisy": "noisy.wav"}) + "\n")
    ab_config.testsets["se"] = str(tmp_path / "se.jsonl")
    ab_config.systems = ["gt", "wiener"]
    arena = Arena(ab_config)
    match = arena.new_match("se", None, "ann")
    heard, voice = match["given"]
    assert voice is None and np.allclose(audio.load_audio(heard), audio.load_audio(tmp_path / "noisy.wav"), atol=1e-3)
    assert {match["a"], match["b"]} == {"gt", "wiener"}
    ab_config.systems = ["gt", f"other={Path(ab_config.testsets['set']).parent / 'other'}"]
    assert Arena(ab_config).new_match("set", None, "ann")["given"] == [None, None]  # a TTS prompt has no input
