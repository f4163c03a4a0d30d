"""What belongs to one visitor stays theirs: saved voices live in the visitor's browser, fitted voices in
their session; the operator's shared library is read-only and capped."""

import json

import numpy as np
import pytest

from models.pipelines import fitted_voices
from studio import voices


def test_saved_voices_are_named_capped_and_never_list_each_other():
    here = voices.save({}, "  Narrator   One ", 4242)
    assert here == {"Narrator One": 4242}
    assert voices.pick(here, {}, "Narrator One") == 4242
    for bad_name in ("", " " * 3, "x" * 61, "Sneaky (shared)"):
        with pytest.raises(ValueError, match="name"):
            voices.save(here, bad_name, 1)
    for bad_seed in (-1, 2**32, 1.5, "abc", float("nan"), None):
        with pytest.raises(ValueError, match="voice seed"):
            voices.save(here, "x", bad_seed)
    full = {f"voice {k}": k for k in range(voices.MAX_SAVED_VOICES)}
    with pytest.raises(ValueError, match=f"{voices.MAX_SAVED_VOICES} saved voices"):
        voices.save(full, "one more", 1)
    assert voices.save(full, "voice 3", 99)["voice 3"] == 99  # replacing is always allowed
    with pytest.raises(ValueError) as error:
        voices.pick(full, {}, "not there")
    assert "voice 1" not in str(error.value)  # the refusal names no saved voice


def test_the_shared_library_is_read_only_checked_and_capped(tmp_path):
    library = tmp_path / "library.json"
    library.write_text(json.dumps({"Studio narrator": 12}))
    shared = voices.read_library(library)
    assert voices.menu({"Mine": 3}, shared) == ["Mine", "Studio narrator (shared)"]
    assert voices.pick({}, shared, "Studio narrator (shared)") == 12
    assert voices.read_library(None) == {}
    for text, problem in ((json.dumps({"a": -4}), "voice seed"), ("[1, 2]", "JSON object"), ("{", "readable JSON"),
                          (json.dumps({f"v{k}": k for k in range(voices.MAX_LIBRARY_VOICES + 1)}), "more than")):
        library.write_text(text)
        with pytest.raises(ValueError, match=problem):
            voices.read_library(library)


def test_visitors_do_not_share_saved_or_fitted_voices(served_studio):
    """Two clients are two visitors: an API client holds its own saved voices (the page keeps them in its
    browser, test_browser.py), and clearing fitted voices clears only the caller's."""
    from gradio_client import Client

    from models import pipelines

    url, _, _ = served_studio
    a, b = Client(url, verbose=False), Client(url, verbose=False)
    mine, menu = a.predict("Narrator One", 4242, {}, api_name="/save_voice")
    assert mine == {"Narrator One": 4242} and a.predict("Narrator One", mine, api_name="/pick_voice") == 4242
    with pytest.raises(Exception, match="no saved voice named 'Narrator One' in this browser"):
        b.predict("Narrator One", {}, api_name="/pick_voice")

    pipelines.clear_fitted_voices()
    fitted_voices._FITTED[a.session_hash, "voice"] = ({"weight": np.zeros(1)}, {})  # as fit_voice leaves it
    assert b.predict(api_name="/clear_fitted_voices")[0] == "Cleared your 0 fitted voices."
    assert (a.session_hash, "voice") in fitted_voices._FITTED
    assert a.predict(api_name="/clear_fitted_voices")[0] == "Cleared your 1 fitted voice."
    assert not fitted_voices._FITTED


def test_held_voices_must_be_an_object_and_the_data_folder_is_never_a_visitor_path(tmp_path):
    from studio.common import visitor_message
    from studio.config import StudioConfig

    for held in ([1, 2], 7, "x"):
        with pytest.raises(ValueError, match="JSON object"):
            voices.pick(held, {}, "a")
    config = StudioConfig(data_dir=tmp_path / "data", testsets={}, systems=[], model_roots=[str(tmp_path)])
    (tmp_path / "data" / "eval" / "run-1").mkdir(parents=True)
    config.check_model(str(tmp_path))  # an operator's model folder...
    with pytest.raises(ValueError, match="outside the folders"):
        config.check_model(str(tmp_path / "data" / "eval" / "run-1"))  # ...but never the data folder inside it
    try:
        open(tmp_path / "data" / "missing.wav")
    except FileNotFoundError as error:
        assert visitor_message(error) == "missing.wav: No such file or directory"
