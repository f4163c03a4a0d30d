import warnings

import pytest

from models import text
from models.text import SymbolTable, TextError, TextFrontend, check_text, normalize_text, split_sentences


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("I have 3 cats.", "I have three cats."),
        ("It costs $5.50 today.", "It costs five dollars and fifty cents today."),
        ("Only $1!", "Only one dollar!"),
        ("He paid £2.01.", "He paid two pounds and one penny."),
        ("$1.5 million", "one point five million dollars"),
        ("The 21st century", "The twenty first century"),
        ("In 1999 and 2005.", "In nineteen ninety nine and two thousand and five."),
        ("the 1990s", "the nineteen nineties"),
        ("Dr. Smith met Mr. Jones.", "Doctor Smith met Mister Jones."),
        ("at 3:05 p.m.", "at three oh five p m"),
        ("No. 7 is 50% off", "number seven is fifty percent off"),
        ("1,000,000 people", "one million people"),
        ("pi is 3.14", "pi is three point one four"),
        ("a \u201csmart\u201d caf\u00e9 \u2014 ok\u2026", 'a "smart" cafe, ok.'),
        ("cats & dogs", "cats and dogs"),
        ("It was -5 degrees", "It was minus five degrees"),
    ],
)
def test_normalize(raw, expected):
    assert normalize_text(raw) == expected


@pytest.mark.parametrize("bad, message", [("", "empty"), ("   \n", "empty"), ("!!! ??? ...", "no speakable"),
                                          ("\u4f60\u597d", "no speakable")])
def test_unspeakable_text(bad, message):
    with pytest.raises(TextError, match=message):
        check_text(bad)


def test_over_long_text():
    with pytest.raises(TextError, match="limit is 10"):
        check_text("a" * 11, max_chars=10)


def test_split_sentences():
    parts = split_sentences("One. Two! Three? " + "word, " * 60 + "end.", max_chars=100)
    assert parts[:3] == ["One.", "Two!", "Three?"]
    assert all(len(p) <= 100 for p in parts)
    assert "".join(parts).replace(" ", "").count("word") == 60


def test_symbol_table_round_trip_and_fixed_version():
    table = SymbolTable()
    assert len(set(table.symbols)) == len(table.symbols)  # no duplicates
    ids = table.encode("hˈɛloʊ, wˈɜːld!")
    assert table.decode(ids) == "hˈɛloʊ, wˈɜːld!"
    assert SymbolTable.from_dict(table.to_dict()) == table
    tampered = table.to_dict()
    tampered["symbols"] = tampered["symbols"][::-1]
    with pytest.raises(ValueError, match="differs"):
        SymbolTable.from_dict(tampered)


def test_unknown_symbols_warn():
    with pytest.warns(UserWarning, match="not in table"):
        ids = SymbolTable().encode("a#b")
    assert ids[1] == SymbolTable().symbols.index(text.UNK)


@pytest.mark.skipif(not text.espeak_available(), reason="espeak-ng not installed")
def test_phonemize_with_stress_and_punctuation():
    [ipa] = text.phonemize([normalize_text("Hello, world! It's 2024.")])
    assert "ˈ" in ipa and ipa.startswith("həlˈoʊ,") and ipa.endswith(".")
    frontend = TextFrontend.default()
    assert frontend.mode == "phoneme"
    [ids] = frontend.encode(["Hello, world!"])
    assert text.UNK not in frontend.symbols.decode(ids) and len(ids) > 5


def test_character_fallback_warns(monkeypatch):
    monkeypatch.setattr(text, "espeak_available", lambda: False)
    with pytest.warns(UserWarning, match="espeak-ng not found"):
        frontend = TextFrontend.default()
    assert frontend.mode == "char"
    assert frontend.units(["Hello, World."]) == ["hello, world."]
    with pytest.raises(RuntimeError, match="apt-get install espeak-ng"):
        TextFrontend.from_dict(TextFrontend("phoneme").to_dict())


def test_frontend_config_round_trip():
    frontend = TextFrontend("char")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TextFrontend.from_dict(frontend.to_dict()) == frontend


def test_a_cut_transcript_keeps_the_words_heard_in_the_kept_audio():
    from models.text import transcript_prefix

    given = "And you always want to see it, in the superlative degree."
    assert transcript_prefix(given, "and you always want") == "And you always want"
    assert transcript_prefix(given, "and you all ways want to see it in") == "And you always want to see it, in"
    assert transcript_prefix(given, "") == ""
