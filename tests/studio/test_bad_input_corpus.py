"""The bad-input corpus (tests/data/bad_inputs.jsonl): every input, through the command line and through the
served API, gets its one clear line, which never shows a server path. New backends and tabs add rows."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from models import audio
from tests.conftest import tone
from tests.studio.test_input_errors import refused

CORPUS = Path(__file__).parents[1] / "data" / "bad_inputs.jsonl"
ROWS = [json.loads(line) for line in CORPUS.read_text().splitlines() if line.strip()]
CASES = [pytest.param(row, surface, id=f"{surface}: {row['id']}")
         for row in ROWS for surface in row.get("surfaces", ["cli", "api"])]


def make_audio(kind: str, folder: Path) -> Path:
    """The reference clip a row names, made here: each is unusable in its own way."""
    path = folder / f"{kind}.wav"
    if kind == "silent":
        audio.save_audio(path, np.zeros(audio.SAMPLE_RATE))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        audio.save_audio(path, tone(2.0))
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    elif kind == "text":
        path.write_text("this is not audio\n" * 50)
    elif kind == "nan":
        wav = tone(1.0)
        wav[100:200] = np.nan
        sf.write(path, wav, audio.SAMPLE_RATE, subtype="FLOAT")
    elif kind == "long":  # 11 minutes, at 8 kHz to stay small
        sf.write(path, 0.1 * np.sin(np.arange(8000 * 660) / 10).astype(np.float32), 8000, subtype="PCM_16")
    else:
        raise ValueError(f"unknown audio kind {kind!r}")
    return path


def fill(text: str, data: Path) -> str:
    return (text.replace("{long_text}", "word " * 1000).replace("{long_word}", "x" * 61)
            .replace("{data}", str(data)))


def write_manifest(row, folder: Path, data: Path) -> Path:
    rows = row if isinstance(row, list) and not isinstance(row[0], int) else [row]
    path = folder / "bad.jsonl"
    path.write_text("".join(fill(json.dumps(r), data) + "\n" for r in rows))
    return path


def expected(row, surface: str) -> str:
    return row["expect"] if isinstance(row["expect"], str) else row["expect"][surface]


def tts_defaults() -> list:
    from models import pipelines
    from studio.tabs.synthesize import sampling_names

    specs = pipelines.all_tts_controls()
    return [specs[name].default for name in sampling_names()]


@pytest.mark.parametrize("row, surface", CASES)
def test_bad_input_gets_its_one_line(row, surface, served_studio, capsys, tmp_path):
    from gradio_client import Client, handle_file

    url, config, _ = served_studio
    data = config.data_dir
    if surface == "cli":
        out = tmp_path / "out"
        if "tts" in row:
            request = row["tts"]
            argv = ["tts", "--model", "sled", "--text", fill(request["text"], data), "--out", str(tmp_path / "x.wav")]
            argv += [f"--cfg={request['cfg']}"] if "cfg" in request else []
            argv += [f"--seed={request['seed']}"] if request.get("seed") is not None else []
            argv += ["--ref", str(make_audio(request["ref"], tmp_path)), "--ref-text", "hello"] if "ref" in request \
                else []
        elif "system" in row:
            manifest = write_manifest({"id": "a", "text": "hi"}, tmp_path, data)
            argv = ["eval", "--manifest", str(manifest), "--system", row["system"], "--out", str(out)]
        else:
            manifest = write_manifest(row["manifest"], tmp_path, data)
            argv = ["eval", "--manifest", str(manifest), "--system", "gt", "--out", str(out)]
        refused(capsys, argv, expected(row, "cli"))
        assert not (tmp_path / "x.wav").exists() and not out.exists()  # nothing written
        return

    client = Client(url, verbose=False)
    if "tts" in row:
        request = row["tts"]
        ref = handle_file(str(make_audio(request["ref"], tmp_path))) if "ref" in request else None
        args = ["sled", fill(request["text"], data), ref, "hello" if ref else "", request.get("cfg", 2.0),
                request.get("seed", 0), False, *tts_defaults(), False, 200]
        endpoint = "/synthesize"
    elif "system" in row:
        args, endpoint = ["tones", None, [], row["system"], ["stoi"], 1, "", False], "/evaluate"
    else:
        manifest = handle_file(str(write_manifest(row["manifest"], tmp_path, data)))
        args, endpoint = ["tones", manifest, ["gt"], "", ["stoi"], 1, "", False], "/evaluate"
    runs = set((data / "eval").glob("*")) if (data / "eval").is_dir() else set()
    with pytest.raises(Exception) as error:
        client.predict(*args, api_name=endpoint)
    message = str(error.value)
    assert expected(row, "api") in message, message
    # No server folder: Gradio's uploads, the studio's data and served folders (a client-side message may name
    # the client's own file).
    assert not any(folder in message for folder in ("/tmp/gradio", str(data), "speech-studio-served")), message
    assert (set((data / "eval").glob("*")) if (data / "eval").is_dir() else set()) == runs  # no orphan run
