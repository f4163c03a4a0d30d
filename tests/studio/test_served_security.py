"""The served studio as a visitor and an attacker see it (loopback HTTP and gradio_client): what
it serves, what it reads, how it refuses, and that a refusal keeps the visitor's state."""

import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from models import audio
from tests.conftest import tone


@pytest.fixture
def studio(served_studio):
    return served_studio


@pytest.fixture
def client(studio):
    from gradio_client import Client

    return Client(studio[0], verbose=False)


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def file_url(base: str, path: Path) -> str:
    return f"{base}gradio_api/file={urllib.parse.quote(str(path))}"


def test_the_data_folder_and_the_vote_store_are_not_served(studio, client):
    url, config, _ = studio
    client.predict("tones", "(random prompt)", api_name="/ab_new_pair")  # the store and clip cache exist now
    votes = config.data_dir / "arena" / "votes.sqlite"
    clips = sorted((config.data_dir / "arena" / "clips").rglob("*.wav"))
    assert votes.is_file() and clips
    for private in (votes, clips[0]):
        assert status_of(file_url(url, private)) == 403
    assert status_of(file_url(url, Path(audio.__file__))) == 403  # nor the server's code


def test_ab_clips_have_opaque_names(studio, client):
    a, b = client.predict("tones", "u1 | tone 1", api_name="/ab_new_pair")[:2]
    for path in (a, b):
        assert re.fullmatch(r"[0-9a-f]{32}\.wav", Path(path).name), path  # no system or prompt in the name
        assert audio.load_audio(path).size > 0


def test_a_manifest_or_system_naming_server_paths_is_refused_alike(studio, client, tmp_path):
    from gradio_client import handle_file

    _, _, secret = studio
    messages = []
    outside = "outside the folders"
    for target, refusal in ((secret, outside), (secret.parent / "missing.wav", outside),
                            (Path("/etc/shadow.wav"), outside), (Path("/etc/shadow"), "not an audio file")):
        manifest = tmp_path / f"leak-{len(messages)}.lst"
        manifest.write_text(f"x|a|{target}|some words|{target}\n")
        with pytest.raises(Exception, match=refusal) as error:
            client.predict(None, handle_file(str(manifest)), studio[1].systems, "", ["stoi"], 1, "", False,
                           api_name="/evaluate")
        assert str(target.parent) not in str(error.value)  # the file's name only, never its folder
        messages.append(str(error.value).replace(target.name, "NAME"))
    assert len(set(messages[:3])) == 1  # whether the file exists, is missing or unreadable: the same line
    with pytest.raises(Exception, match="outside the folders this studio reads"):
        client.predict("tones", None, ["gt"], f"leak={secret.parent}", ["stoi"], 1, "", False, api_name="/evaluate")


def test_uploads_over_the_limit_are_refused(studio, client, tmp_path):
    import httpx
    from gradio_client import handle_file

    big = tmp_path / "big.wav"
    audio.save_audio(big, tone(30.0))  # 1.3 MB of 16-bit audio, over the 1 MB limit
    with pytest.raises(Exception, match="(?i)size|large|413"):
        client.predict(handle_file(str(big)), "vocoder", api_name="/resynthesize")
    with big.open("rb") as f:  # a raw upload, past the page's own check: the server refuses it too
        response = httpx.post(f"{studio[0]}gradio_api/upload", files={"files": ("big.wav", f)}, timeout=60)
    assert response.status_code == 413


def test_errors_reach_api_clients_and_keep_the_pair(studio, client):
    with pytest.raises(Exception, match="Start a comparison"):
        client.predict(api_name="/ab_vote_A")  # a refused vote reaches the client with its reason...
    client.predict("tones", "u2 | tone 2", api_name="/ab_new_pair")
    with pytest.raises(Exception, match="Play both clips"):
        client.predict(api_name="/ab_vote_A")
    client.predict(api_name="/ab_played_a")
    client.predict(api_name="/ab_played_b")
    with pytest.raises(Exception, match="Listen to both clips"):  # two 1 s tones: played, but not heard yet
        client.predict(api_name="/ab_vote_B")
    time.sleep(1.1)
    status = client.predict(api_name="/ab_vote_B")[0]  # ...and the pair survived the refusals
    assert "Vote stored" in status and "u2" in status


def test_blank_run_names_are_unique_per_request(studio, client):
    names = []
    for _ in range(2):  # two visitors with the default (blank) name: neither is refused
        result = client.predict("tones", None, studio[1].systems, "", ["stoi"], 1, "", False, api_name="/evaluate")
        assert "Done" in result[1]
        names.append(result[-1])
    assert names[0] != names[1] and all(name.startswith("run-") for name in names)
    assert not any(str(studio[1].data_dir) in str(part) for part in result)  # no server path in what is shown
    files = [p for part in result if isinstance(part, (list, tuple)) for p in part if str(p).endswith(".html")]
    page = Path(files[0]).read_text()
    assert "stoi" in page and "tones.jsonl" in page  # the results and the test set's name...
    assert str(studio[1].data_dir.parent) not in page and "git commit" not in page  # ...no paths, no metadata


def test_the_default_systems_fit_the_test_set(studio):
    from studio.tabs.evaluate import applicable_systems

    config = studio[1]
    text_only = Path(config.data_dir).parent / "words.jsonl"
    text_only.write_text('{"id": "w0", "text": "only words"}\n')
    config.testsets["words"] = str(text_only)
    try:
        assert applicable_systems(config, "tones") == config.systems
        assert applicable_systems(config, "words") == []  # neither system can speak text
    finally:
        del config.testsets["words"]


def test_a_header_too_long_is_refused_before_decoding(tmp_path, monkeypatch):
    """The duration comes from the header: a long file is refused without reading its samples."""
    import soundfile as sf

    long = tmp_path / "long.wav"
    with sf.SoundFile(long, "w", samplerate=8000, channels=1, subtype="PCM_16") as f:
        f.write(np.zeros(8000 * 70, np.int16))

    def no_decoding(*args, **kwargs):
        raise AssertionError("the samples were decoded")

    monkeypatch.setattr(sf, "read", no_decoding)
    with pytest.raises(audio.AudioError, match="70.0 s long; the limit is 60 s"):
        audio.load_audio(long)


def test_a_model_box_naming_a_server_folder_is_refused(client, studio):
    _, _, secret = studio
    for folder in (secret.parent, "/etc", "/no/such/folder"):
        with pytest.raises(Exception, match="model folder .* is outside the folders this studio reads"):
            client.predict(str(folder), "Hello.", None, "", 2.0, 0, False, api_name="/synthesize")


def test_what_a_menu_offers_after_an_event_works_through_the_api_alone(studio, client, arctic_path):
    """A token codec's windows (shown after choosing the codec) and a prompt of the chosen test set are
    accepted without the UI event that fills their menus."""
    from gradio_client import handle_file

    from models import pipelines

    window = min(pipelines.codec_windows("alm_tokenizer"))
    _, _, info = client.predict(handle_file(str(arctic_path)), "alm_tokenizer", window, api_name="/resynthesize")
    assert info["window"] == window
    with pytest.raises(Exception, match="only a token codec takes a window"):
        client.predict(handle_file(str(arctic_path)), "vocoder", window, api_name="/resynthesize")
    status = client.predict("tones", "u2 | tone 2", api_name="/ab_new_pair")[2]
    assert "u2" in status


def test_a_raw_call_with_too_few_values_is_told_what_the_endpoint_takes(studio):
    """Gradio's own refusal reached a raw REST client as `{"error": null}`."""
    import httpx

    event = httpx.post(f"{studio[0]}gradio_api/call/synthesize", json={"data": ["sled"]}, timeout=30).json()
    stream = httpx.get(f"{studio[0]}gradio_api/call/synthesize/{event['event_id']}", timeout=60).text
    assert "event: error" in stream and "/synthesize takes" in stream and "it got 1" in stream and "text" in stream
