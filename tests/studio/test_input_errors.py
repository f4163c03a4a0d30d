"""Bad input on the command line and in files: one line naming the problem, exit code 2, no
traceback, nothing written or overwritten."""

import json

import numpy as np
import pytest
import soundfile as sf

from studio.cli import main
from tests.conftest import tone


def refused(capsys, argv: list[str], *expected: str) -> str:
    """Run the CLI; it must exit 2 with a single error line holding every expected fragment."""
    try:
        code = main(argv)
    except SystemExit as stop:  # argument errors end in the parser
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for fragment in expected:
        assert fragment in err, err
    return err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "1e6"])
def test_guidance_scale_out_of_range(capsys, tmp_path, value):
    refused(capsys, ["tts", "--text", "hi", f"--cfg={value}", "--out", str(tmp_path / "x.wav")],
            "--cfg", "between 1 and 10")
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["tts", "--text", "hi", "--seed", str(2**70)], "--seed"),
    (["tts", "--text", "hi", "--seed", "-1"], "--seed"),
    (["eval", "--manifest", "m.lst", "--system", "gt", "--limit", "-1"], "--limit"),
    (["eval", "--manifest", "m.lst", "--system", "gt", "--limit", "0"], "--limit"),
    (["eval", "--manifest", "m.lst", "--system", "gt", "--per-speaker", "0"], "--per-speaker"),
    (["bench", "vocoder", "--repeats", "0"], "--repeats"),
])
def test_numeric_options_are_range_checked(capsys, tmp_path, argv, fragment):
    out = ["--out", str(tmp_path / "x.wav")] if argv[0] in ("tts", "eval") else []
    refused(capsys, [*argv, *out], fragment)


def write_manifest(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_malformed_manifests_name_file_and_line(capsys, tmp_path):
    number = write_manifest(tmp_path / "number.jsonl", [{"id": "a", "text": 42}])
    refused(capsys, ["eval", "--manifest", str(number), "--system", "gt", "--out", str(tmp_path / "r1")],
            "number.jsonl", "row 1", "text must be a string")
    array = write_manifest(tmp_path / "array.jsonl", [{"id": "a", "text": "fine"}, [1, 2]])
    refused(capsys, ["eval", "--manifest", str(array), "--system", "gt", "--out", str(tmp_path / "r2")],
            "array.jsonl:2", "JSON object")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"id": "a", "text": "caf\xe9"}\n')
    refused(capsys, ["eval", "--manifest", str(latin), "--system", "gt", "--out", str(tmp_path / "r3")],
            "latin.jsonl", "not UTF-8")


def test_results_of_the_wrong_shape_are_named_on_resume_and_report(capsys, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [{"id": "a", "text": "words"}])
    results = tmp_path / "run" / "results"
    results.mkdir(parents=True)
    (results / "shard-0-of-1.jsonl").write_text('["not", "a", "row"]\n')
    refused(capsys, ["report", str(tmp_path / "run")], "shard-0-of-1.jsonl:1", "not a results row")
    refused(capsys, ["eval", "--manifest", str(manifest), "--system", "gt", "--out", str(tmp_path / "run"),
                     "--resume"], "shard-0-of-1.jsonl:1", "not a results row")


def test_audio_inputs_that_cannot_be_used(capsys, tmp_path):
    refused(capsys, ["vocode", str(tmp_path), str(tmp_path / "o.wav")], "is a folder")
    truncated = tmp_path / "short.wav"
    sf.write(truncated, tone(4.0), 22050, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[:44 + 2 * 2 * 22050])  # header says 4 s, 2 s of data
    refused(capsys, ["vocode", str(truncated), str(tmp_path / "o.wav")], "short.wav is truncated", "4.00 s", "2.00 s")
    assert not (tmp_path / "o.wav").exists()


def test_outputs_are_checked_before_work_and_never_overwritten(capsys, tmp_path, arctic_path):
    refused(capsys, ["tts", "--model", "no-such-model", "--text", "hi", "--out", str(tmp_path / "x.mp3")],
            "unsupported format '.mp3'")  # before the (missing) model is looked at
    existing = tmp_path / "keep.wav"
    existing.write_bytes(b"precious")
    refused(capsys, ["vocode", str(arctic_path), str(existing)], "exists", "--overwrite")
    assert existing.read_bytes() == b"precious"
    copy = tmp_path / "in.wav"
    copy.write_bytes(arctic_path.read_bytes())
    refused(capsys, ["vocode", str(copy), str(copy), "--overwrite"], "also the input")
    assert copy.read_bytes() == arctic_path.read_bytes()


@pytest.mark.parametrize("text, fragment", [
    ("x" * 300, "300-character word"),
    ("<speak>Hello <break time='1s'/> there</speak>", "markup tag"),
    ("\x1b[31mHello\x1b[0m there", "control characters"),
])
def test_text_that_would_be_spoken_as_letters(capsys, tmp_path, text, fragment):
    refused(capsys, ["tts", "--model", "sled", "--text", text, "--out", str(tmp_path / "x.wav")], fragment)


def test_plain_text_with_symbols_still_passes():
    from models.text import check_text

    assert check_text("Is 3 < 4? Yes, and 5 > 2.") and check_text("A well-known, state-of-the-art tool.")


def test_a_silent_generation_input_is_one_line(capsys, tmp_path):
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(22050, np.float32), 22050)
    refused(capsys, ["vocode", str(silent), str(tmp_path / "o.wav")], "silent")


def test_tts_help_lists_every_local_model_and_its_own_options(capsys):
    from models import pipelines

    with pytest.raises(SystemExit):
        main(["tts", "--help"])
    shown = capsys.readouterr().out
    for model in pipelines.available_tts_models():
        assert f"  {model}: " in shown
    assert "--stop-threshold 0.05-0.95" in shown
