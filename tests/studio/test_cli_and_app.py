import subprocess
import sys
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import soundfile as sf

from evaluation.metrics import pesq_score
from models.audio import load_audio
from models.pipelines import fitted_voices
from studio import cli
from tests.conftest import REPO


@pytest.mark.slow
def test_cli_vocode_end_to_end(tmp_path, arctic_path):
    out = tmp_path / "out.wav"
    result = subprocess.run([sys.executable, "-m", "studio", "vocode", str(arctic_path), str(out)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout
    info = sf.info(out)
    assert info.samplerate == 22050 and info.channels == 1
    assert pesq_score(load_audio(arctic_path), load_audio(out), 22050) >= 2.5


def test_cli_reports_bad_input(tmp_path, capsys):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(22050, np.float32), 22050)
    assert cli.main(["vocode", str(silent), str(tmp_path / "o.wav")]) == 2
    assert "silent" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


def test_app_builds_with_stable_api_names():
    from studio.app import build_app

    demo = build_app()
    names = {dep.api_name for dep in demo.fns.values()}
    assert {"resynthesize", "synthesize", "synthesize_stream", "tts_controls", "ab_new_pair", "ab_played_a",
            "ab_played_b", "ab_vote_A", "ab_vote_B", "ab_vote_tie", "ab_vote_both_bad", "ab_leaderboard",
            "ab_export", "evaluate", "evaluate_plot", "cfg_sweep", "latents", "latents_view", "latents_audio",
            "convert", "enhance", "extract", "convert_controls", "enhance_controls", "extract_controls"} <= names
    assert not any("lambda" in name for name in names)  # every handler has a stable, chosen name


def test_synthesis_errors_and_voice_buttons_stay_where_they_belong(tmp_path):
    """After an error Gradio badged every output "Error", the Seed box included; the voice buttons sat in
    Groups, which drew them as thin strips over grey blocks."""
    from studio.app import build_app
    from studio.config import StudioConfig

    config = build_app(StudioConfig(data_dir=tmp_path)).get_config_file()
    components = {c["id"]: c for c in config["components"]}
    for api_name, output in (("synthesize", "tts-output"), ("synthesize_stream", "tts-stream")):
        dependency = next(d for d in config["dependencies"] if d.get("api_name") == api_name)
        assert [components[i]["props"].get("elem_id") for i in dependency["show_progress_on"]] == [output]
    parents = {}
    def walk(node, parent=None):
        parents[node["id"]] = parent
        for child in node.get("children", []):
            walk(child, node["id"])
    walk(config["layout"])
    buttons = [i for i, c in components.items() if c["type"] == "button"
               and c["props"].get("value") in ("Random voice", "Save voice", "Fit to this voice (TTT)")]
    assert len(buttons) == 3
    for button in buttons:
        node = parents[button]
        while node is not None:
            assert components.get(node, {}).get("type") != "group"
            node = parents[node]


def test_resynthesis_handler(arctic_path):
    from studio.tabs.resynthesis import resynthesize

    (rate, samples), figure, scores = resynthesize(str(arctic_path))
    assert rate == 22050 and samples.dtype == np.int16 and np.abs(samples).max() > 1000
    assert scores["pesq_wb"] >= 2.5 and scores["stoi"] >= 0.88 and scores["rtf"] > 0
    assert len(figure.data) == 2


def test_speech_tabs_run_the_baselines_and_name_what_is_missing(arctic_path):
    from studio.common import user_errors
    from studio.tabs.speech import EXAMPLES, task_controls, transform, visible_controls

    noisy = EXAMPLES["enhance"][0][0]
    names = list(task_controls("enhance"))
    assert names == ["floor_db", "strength", "atten_lim_db"]  # wiener's, noisereduce's, then deepfilternet's
    shown = visible_controls(names, "noisereduce")
    assert [update.get("visible") for update in shown] == [False, True, False]
    (rate, samples), figure, info = transform("enhance", names, "wiener", noisy, None, 3, False, -20, 1.0, 100)
    assert rate == 22050 and np.abs(samples).max() > 1000 and len(figure.data) == 2
    assert info["model"] == "wiener" and info["floor_db"] == -20 and "strength" not in info and info["rtf"] > 0
    source, voice = EXAMPLES["convert"][0]
    (_, converted), _, info = transform("convert", ["k"], "knn_vc", source, voice, 0, True, 2)
    assert info["k"] == 2 and len(converted) > 3 * 22050
    with pytest.raises(gr.Error, match="No voice clip"):
        user_errors(transform)("convert", ["k"], "knn_vc", source, None, 0, False, 4)
    with pytest.raises(gr.Error, match="No speaker extraction model is installed"):
        user_errors(transform)("extract", [], None, source, voice, 0, False)


def test_bad_input_becomes_a_gradio_error(tmp_path):
    """A refused input raises gr.Error with the reason: the page and API clients see it, and no
    output is overwritten (Gradio updates no output of an event that raised)."""
    import gradio as gr

    from studio.common import user_errors
    from studio.tabs.resynthesis import resynthesize

    handler = user_errors(resynthesize)
    with pytest.raises(gr.Error, match="No audio"):
        handler(None)
    garbage = tmp_path / "x.wav"
    garbage.write_bytes(b"garbage")
    with pytest.raises(gr.Error, match="Could not read audio file x.wav"):
        handler(str(garbage))


def test_served_app_answers_the_api(arctic_path, served_studio):
    """The studio served on loopback: the documented API call returns audio and scores."""
    from gradio_client import Client, handle_file

    client = Client(served_studio[0], verbose=False)
    audio_file, _, scores = client.predict(handle_file(str(arctic_path)), "vocoder", api_name="/resynthesize")
    assert sf.info(audio_file).duration > 3.5
    assert scores["pesq_wb"] >= 2.5


def test_synthesize_handler_reproduces_its_seed_and_streams(sled_run, arctic_path):
    import gradio as gr

    from models import pipelines
    from studio.common import user_errors
    from studio.tabs import synthesize as tab

    names = tab.sampling_names()
    assert "stop_threshold" in names
    controls = pipelines.all_tts_controls()
    values = [0.5 if name == "stop_threshold" else controls[name].default for name in names]
    (rate, first), figure, info, seed = tab.synthesize(str(sled_run), "Hello there.", None, None, 1.5, None, True,
                                                       *values)
    assert rate == 22050 and first.dtype == np.int16 and len(figure.data) == 1
    assert info["cfg"] == 1.5 and info["seed"] == seed and info["stop_threshold"] == 0.5
    (_, again), _, _, _ = tab.synthesize(str(sled_run), "Hello there.", None, None, 1.5, seed, False, *values)
    assert np.array_equal(first, again)  # the seed shown reproduces the output

    outputs = list(tab.synthesize_stream(str(sled_run), "Hello there.", str(arctic_path),
                                         "and you always want to see it", 2.0, 3, False, *values))
    chunks = [out[0][1] for out in outputs[:-1]]
    assert chunks and all(len(c) for c in chunks)
    assert outputs[-1][2]["reference"] and outputs[-1][3] == 3
    from models.sled import SLED

    # SLED declares its own controls only; the menu also holds those of every other shipped TTS model.
    assert tab.declared_controls(str(sled_run)) == set(SLED.CONTROLS) <= set(names)
    assert tab.declared_controls("/no/such") == set()

    with pytest.raises(gr.Error, match="empty"):
        user_errors(tab.synthesize)(str(sled_run), "  ", None, None, 2.0, 0, False, *values)
    with pytest.raises(gr.Error, match="No TTS model"):
        list(user_errors(tab.synthesize_stream)(None, "hi", None, None, 2.0, 0, False, *values))


def test_readme_api_example_synthesizes(sled_run):
    """The README's gradio_client call, against a served studio, with the tiny checkpoint."""
    from gradio_client import Client

    from studio.bench import served
    from studio.config import StudioConfig

    with served(StudioConfig(testsets={}, systems=[], model_roots=[str(sled_run)])) as url:
        client = Client(url, verbose=False)
        wav_path, mel, settings, seed = client.predict(
            str(sled_run), "The birch canoe slid on the smooth planks.", None, "", 2.0, 0, False,
            api_name="/synthesize")
    assert sf.info(wav_path).samplerate == 22050 and settings["seed"] == seed == 0 and settings["rtf"] > 0


def test_voice_seed_tools_and_test_time_training_in_the_synthesize_tab(kalle_run, sled_run, arctic_path,
                                                                      tmp_path, monkeypatch, fits_pass_the_check):
    import gradio as gr

    from models import pipelines
    from models.kalle import KALLE
    from studio.common import user_errors
    from studio.tabs import synthesize as tab

    monkeypatch.setattr(pipelines, "all_tts_controls", lambda: dict(KALLE.CONTROLS))  # as if kalle shipped
    names = tab.sampling_names()
    values = {name: control.default for name, control in KALLE.CONTROLS.items()}
    *sliders, voice_tools, fit_tools = tab.visible_controls(str(kalle_run))
    assert voice_tools["visible"] and fit_tools["visible"] and all(u["visible"] for u in sliders)
    *_, voice_tools, fit_tools = tab.visible_controls(str(sled_run))
    assert not voice_tools["visible"] and not fit_tools["visible"]

    here, menu = tab.save_named_voice({}, {"Library voice": 7}, "  Deep   narrator ", 4242)
    assert here == {"Deep narrator": 4242} and menu["value"] == "Deep narrator"
    assert menu["choices"] == ["Deep narrator", "Library voice (shared)"]
    assert tab.pick_saved_voice(here, {"Library voice": 7}, "Deep narrator") == 4242
    assert tab.pick_saved_voice(here, {"Library voice": 7}, "Library voice (shared)") == 7
    with pytest.raises(gr.Error, match="name"):
        user_errors(tab.save_named_voice)({}, {}, "", 1)

    def speak(voice_seed, *fit):
        row = [{**values, "voice_seed": voice_seed}[name] for name in names]
        return tab.synthesize(str(kalle_run), "Hello there.", None, None, 2.0, 0, False, *row, *fit)

    (_, a), _, info, _ = speak(4242)
    assert info["voice_seed"] == 4242 and np.array_equal(speak(4242)[0][1], a)
    assert not np.array_equal(speak(7)[0][1], a)

    pipelines.clear_fitted_voices()
    status, use = tab.fit_voice(str(kalle_run), str(arctic_path), "and you always want to see it", 16, owner="a")
    assert use and "fitted in" in status
    row = [values[name] for name in names]
    _, _, info, _ = tab.synthesize(str(kalle_run), "Hello there.", str(arctic_path), "and you always want to see it",
                                   2.0, 0, False, *row, True, 16, owner="a")
    assert info["ttt"]["cached"]  # the fitted voice is reused, not fitted again
    assert tab.clear_fitted("b")[0] == "Cleared your 0 fitted voices."  # another visitor's clear keeps a's fit
    _, _, info, _ = tab.synthesize(str(kalle_run), "Hello there.", str(arctic_path), "and you always want to see it",
                                   2.0, 0, False, *row, True, 16, owner="a")
    assert info["ttt"]["cached"]
    assert tab.clear_fitted("a") == ("Cleared your 1 fitted voice.", False) and pipelines.clear_fitted_voices() == 0


def test_a_fit_that_changes_the_check_sentence_length_is_refused(kalle_run, arctic_path, monkeypatch):
    """Test-time training that makes the model speak the check sentence too long or too short is not used:
    the status says so, the box stays off, and synthesis is the unfitted model's."""
    from models import pipelines
    from models.kalle import KALLE
    from studio.tabs import synthesize as tab

    monkeypatch.setattr(pipelines, "all_tts_controls", lambda: dict(KALLE.CONTROLS))
    monkeypatch.setattr(fitted_voices, "TTT_CHECK_RATIO", (50.0, 60.0))  # no fit passes
    pipelines.clear_fitted_voices()
    transcript = "and you always want to see it"
    status, use = tab.fit_voice(str(kalle_run), str(arctic_path), transcript, 16)
    assert not use and "fitting did not help this voice" in status and "x as long" in status
    row = [control.default for _, control in sorted(KALLE.CONTROLS.items())]
    (_, fitted), _, info, _ = tab.synthesize(str(kalle_run), "Hello there.", str(arctic_path), transcript,
                                             2.0, 0, False, *row, True, 16)
    (_, plain), _, _, _ = tab.synthesize(str(kalle_run), "Hello there.", str(arctic_path), transcript,
                                         2.0, 0, False, *row)
    assert info["ttt"]["refused"] and info["ttt"]["cached"] and np.array_equal(fitted, plain)
    pipelines.clear_fitted_voices()


def _judges(heard_when_fitted: str | None, likeness_when_fitted: float):
    """Scorers for the TTT check: the unfitted model's check sentences (spoken first) are heard right and
    rated 0.5 alike; the fitted model's are heard as `heard_when_fitted` (None: right) and rated as told."""
    from models.pipelines import TTT_CHECK_TEXTS
    from models.training import Scorers

    n, calls = len(TTT_CHECK_TEXTS), {"transcribe": 0, "similarity": 0}

    def transcribe(wav, sr):
        calls["transcribe"] += 1
        right = TTT_CHECK_TEXTS[(calls["transcribe"] - 1) % n]
        return right if calls["transcribe"] <= n or heard_when_fitted is None else heard_when_fitted

    def similarity(a, b, sr):
        calls["similarity"] += 1
        return 0.5 if calls["similarity"] <= n else likeness_when_fitted

    def word_errors(reference, hypothesis):
        ref, hyp = reference.lower().split(), hypothesis.lower().split()
        return sum(r != h for r, h in zip(ref, hyp)) + abs(len(ref) - len(hyp)), len(ref)

    return Scorers(transcribe=transcribe, word_errors=word_errors, similarity=similarity)


@pytest.mark.parametrize("heard, likeness, refusal", [
    ("lanks lanks lanks", 0.9, "word errors in the check sentences"),
    (None, 0.4, "sounds less like the reference"),
    (None, 0.6, None),
])
def test_a_fit_that_speaks_the_check_sentences_worse_is_refused(kalle_run, arctic_path, monkeypatch, heard,
                                                               likeness, refusal):
    """With scorers, a fitted voice is used only when its check sentences are as intelligible as the unfitted
    model's and at least as like the reference."""
    from models import audio, pipelines

    monkeypatch.setattr(fitted_voices, "TTT_CHECK_RATIO", (0.0, float("inf")))  # the tiny model's lengths are noise
    pipelines.clear_fitted_voices()
    ref = audio.load_audio(arctic_path, audio.SAMPLE_RATE)
    judges = _judges(heard, likeness)
    delta, info = pipelines.fit_voice(str(kalle_run), ref, "and you always want to see it", 8, scorers=judges)
    check = info["check"]
    assert len(check["length_ratios"]) == len(pipelines.TTT_CHECK_TEXTS) and check["similarity"]["plain"] == 0.5
    if refusal:
        assert refusal in info["refused"] and delta == {}
    else:
        assert "refused" not in info and delta and check["word_errors"] == {"plain": 0, "fitted": 0}
    pipelines.clear_fitted_voices()


def test_every_endpoint_parameter_is_named_and_the_readme_lists_the_endpoints():
    import tempfile

    from studio.app import api_reference, build_app
    from studio.cli import API_MARKERS
    from studio.config import StudioConfig

    demo = build_app(StudioConfig(data_dir=tempfile.mkdtemp()))
    for endpoint, info in demo.get_api_info()["named_endpoints"].items():
        assert not any(p["parameter_name"].startswith(("param_", "value_")) for p in info["parameters"]), endpoint
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    listed = readme.split(API_MARKERS[0])[1].split(API_MARKERS[1])[0]
    assert listed == api_reference(demo), "the README's endpoint list is stale: speech-studio api --write README.md"


def test_bench_targets_come_from_one_table(monkeypatch, capsys):
    """The bench's choices, help and dispatch are made from cli.BENCH_TARGETS: a target added there is
    offered, described and run, with no other edit."""
    monkeypatch.setitem(cli.BENCH_TARGETS, "echo", ("the settings it was given", lambda args: {"cfg": args.cfg}))
    parser = cli.build_parser()
    bench = parser._subparsers._group_actions[0].choices["bench"]
    assert "echo: the settings it was given" in " ".join(bench.format_help().split())
    assert cli.main(["bench", "echo", "--cfg", "3"]) == 0 and '"cfg": 3.0' in capsys.readouterr().out
