"""Text front-end: English normalization, espeak-ng phonemes, and the symbol table.

    raw text -> normalize_text -> split_sentences -> phonemize (or characters) -> ids

Numbers are spelled with num2words; currency, ordinals, years, times and common
abbreviations get rules of their own first. Phonemes come from espeak-ng through the
phonemizer library (IPA with primary/secondary stress). Without espeak-ng the
front-end falls back to characters and says so. The symbol table is fixed and
versioned, and every checkpoint stores it, so ids keep their meaning.
"""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

from num2words import num2words


class TextError(ValueError):
    """Text that cannot be spoken, with a message that says why."""


# ------------------------------------------------------------- symbol table

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
PUNCTUATION = " !\"'(),-.:;?"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
# IPA that espeak-ng emits for English voices, plus neighbours other accents use.
IPA = "æçðøħŋœɐɑɒɓɔɕɖɗɘəɚɛɜɝɞɟɠɡɢɣɤɥɦɧɨɪɫɬɭɮɯɰɱɲɳɴɵɶɸɹɺɻɽɾʀʁʂʃʄʈʉʊʋʌʍʎʏʐʑʒʔʕʝʟʡʢʰʲʷˈˌːˑ̩̪̃ᵻβθχ"
SYMBOLS_V1 = SPECIALS + tuple(PUNCTUATION) + tuple(LETTERS) + tuple(IPA)
SYMBOL_TABLES = {1: SYMBOLS_V1}
CURRENT_VERSION = 1


@dataclass(frozen=True)
class SymbolTable:
    version: int = CURRENT_VERSION
    symbols: tuple[str, ...] = SYMBOLS_V1
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_index", {s: i for i, s in enumerate(self.symbols)})

    def __len__(self) -> int:
        return len(self.symbols)

    @property
    def pad_id(self) -> int:
        return self._index[PAD]

    @property
    def eos_id(self) -> int:
        return self._index[EOS]

    def encode(self, text: str) -> list[int]:
        unknown = sorted({c for c in text if c not in self._index})
        if unknown:
            warnings.warn(f"symbols not in table v{self.version}, mapped to {UNK}: {''.join(unknown)!r}")
        unk = self._index[UNK]
        return [self._index.get(c, unk) for c in text]

    def decode(self, ids) -> str:
        return "".join(s for s in (self.symbols[int(i)] for i in ids) if s not in SPECIALS)

    def to_dict(self) -> dict:
        return {"version": self.version, "symbols": list(self.symbols)}

    @classmethod
    def from_dict(cls, data: dict) -> "SymbolTable":
        symbols = tuple(data["symbols"])
        known = SYMBOL_TABLES.get(data["version"])
        if known is not None and known != symbols:
            raise ValueError(f"symbol table v{data['version']} differs from the one this code defines")
        return cls(data["version"], symbols)


# ------------------------------------------------------------ normalization

ABBREVIATIONS = {
    "mr": "mister", "mrs": "missus", "ms": "miz", "dr": "doctor", "prof": "professor",
    "st": "saint", "jr": "junior", "sr": "senior", "gen": "general", "gov": "governor",
    "capt": "captain", "lt": "lieutenant", "col": "colonel", "sgt": "sergeant", "rev": "reverend",
    "hon": "honorable", "mt": "mount", "ft": "fort", "co": "company", "ltd": "limited",
    "inc": "incorporated", "corp": "corporation", "vs": "versus", "etc": "et cetera",
    "approx": "approximately", "dept": "department", "est": "established", "no": "number",
}
LATIN = {"e.g.": "for example", "i.e.": "that is", "a.m.": "a m", "p.m.": "p m"}
CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
              "€": ("euro", "euros", "cent", "cents")}
SYMBOL_WORDS = {"&": " and ", "+": " plus ", "@": " at ", "=": " equals ", "%": " percent "}
MAGNITUDES = "thousand|million|billion|trillion"
PUNCT_MAP = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"',
    "\u201e": '"', "\u00ab": '"', "\u00bb": '"', "\u2013": ", ", "\u2014": ", ", "\u2026": ".",
    "\u00a0": " ", "[": "(", "]": ")", "{": "(", "}": ")", "/": " ", "\\": " ", "_": " ", "|": " ",
    "\n": " ", "\t": " ",
})


def spell_number(n: int | float) -> str:
    # num2words puts commas inside large numbers; they would become pauses.
    return num2words(n).replace(",", "").replace("-", " ")


def _currency(match: re.Match) -> str:
    one, many, sub_one, sub_many = CURRENCIES[match["sym"]]
    whole, frac, magnitude = match["whole"].replace(",", ""), match["frac"], match["mag"]
    if magnitude:  # "$1.5 million" -> "one point five million dollars"
        return f"{spell_number(float(whole + '.' + frac) if frac else int(whole))} {magnitude} {many}"
    units, cents = int(whole), int((frac or "0").ljust(2, "0")[:2])
    words = [f"{spell_number(units)} {one if units == 1 else many}"] if units or not cents else []
    if cents:
        words.append(f"{spell_number(cents)} {sub_one if cents == 1 else sub_many}")
    return " and ".join(words)


def _year(match: re.Match) -> str:
    year, plural = int(match[1]), match[2]
    words = num2words(year, to="year").replace("-", " ")
    if plural:  # "1990s" -> "nineteen nineties"
        words = words[:-1] + "ies" if words.endswith("y") else words + "s"
    return words


def _time(match: re.Match) -> str:
    hour, minute, suffix = int(match[1]), int(match[2]), match[3]
    words = spell_number(hour)
    if minute:
        words += (" oh " if minute < 10 else " ") + spell_number(minute)
    elif not suffix:
        words += " o'clock"
    if suffix:
        words += " " + " ".join(suffix.lower().replace(".", ""))
    return words


def _decimal(match: re.Match) -> str:
    whole, digits = match[1], match[2]
    return f"{spell_number(int(whole))} point {' '.join(spell_number(int(d)) for d in digits)}"


def normalize_text(text: str) -> str:
    """Written English to speakable words (case kept, punctuation reduced to , . ! ? ; : ' " ( ) -)."""
    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text).translate(PUNCT_MAP)
    # Accented letters lose their accents (café -> cafe); other scripts are dropped below.
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    for latin, words in LATIN.items():
        text = re.sub(rf"(?i)(?<!\w){re.escape(latin)}", f" {words} ", text)
    text = re.sub(r"(?i)\b(no)\.\s*(?=\d)", "number ", text)
    text = re.sub(
        r"\b(" + "|".join(k for k in ABBREVIATIONS if k != "no") + r")\.",
        lambda m: _match_case(ABBREVIATIONS[m[1].lower()], m[1]), text, flags=re.I,
    )
    text = re.sub(
        rf"(?P<sym>[$£€])\s?(?P<whole>\d[\d,]*)(?:\.(?P<frac>\d+))?(?:\s?(?P<mag>{MAGNITUDES})\b)?",
        _currency, text,
    )
    text = re.sub(r"\b(\d{1,2}):(\d{2})\s*([ap]\.?m\.?)?(?!\w)", _time, text, flags=re.I)
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: num2words(int(m[1]), to="ordinal").replace("-", " "), text)
    text = re.sub(r"\b(1[1-9]\d\d|20\d\d)(s)?\b(?![.,]\d)", _year, text)
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000,000 -> 1000000
    text = re.sub(r"\b(\d+)\.(\d+)\b", _decimal, text)
    text = re.sub(r"(?<![\w.])-(?=\d)", " minus ", text)
    text = re.sub(r"\d+", lambda m: f" {spell_number(int(m[0]))} ", text)
    for symbol, words in SYMBOL_WORDS.items():
        text = text.replace(symbol, words)
    text = re.sub(r"[^A-Za-z!\"'(),\-.:;? ]", " ", text)
    text = re.sub(r"\s+([,.!?;:])", r"\1", text)
    text = re.sub(r"([,.!?;:])\1+", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def _match_case(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


MAX_WORD_CHARS = 50  # longer than any dictionary word: a run-together string, URL or hash
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # all but tab, newline, carriage return
_MARKUP = re.compile(r"<\s*/?\s*[A-Za-z][^<>]*>")


def check_text(text: str, max_chars: int | None = None) -> str:
    """Normalize and validate user text; raise TextError naming the problem."""
    if not isinstance(text, str) or not text.strip():
        raise TextError("text is empty")
    if max_chars is not None and len(text) > max_chars:
        raise TextError(f"text is {len(text)} characters long; the limit is {max_chars}")
    if _CONTROL.search(text):
        raise TextError("text contains control characters (terminal escape codes?): give plain text")
    tag = _MARKUP.search(text)
    if tag:
        raise TextError(f"text contains a markup tag {tag.group(0)[:30]!r}; SSML and HTML are not read: "
                        "give plain text")
    longest = max(text.split(), key=len)
    if len(longest) > MAX_WORD_CHARS:
        raise TextError(f"text has a {len(longest)}-character word ({longest[:20]}...); the limit is "
                        f"{MAX_WORD_CHARS} (it would be spelled out letter by letter)")
    normalized = normalize_text(text)
    if not re.search(r"[A-Za-z]", normalized):
        raise TextError(f"text has no speakable words: {text[:60]!r}")
    return normalized


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """Sentences of normalized text, each cut at clause marks, then words, to max_chars."""
    pieces = []
    for sentence in re.split(r"(?<=[.!?])[\"')]*\s+", text.strip()):
        while len(sentence) > max_chars:
            cut = max(sentence.rfind(mark, 0, max_chars) for mark in ",;:")
            cut = cut + 1 if cut > 0 else sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            pieces.append(sentence)
    return [p for p in pieces if re.search(r"[A-Za-z]", p)]


# -------------------------------------------------------------- phonemes

_ESPEAK_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _espeak(language: str):
    from phonemizer.backend import EspeakBackend

    logging.getLogger("phonemizer").setLevel(logging.ERROR)
    return EspeakBackend(language, preserve_punctuation=True, with_stress=True,
                         language_switch="remove-flags", logger=logging.getLogger("phonemizer"))


@lru_cache(maxsize=1)
def espeak_available() -> bool:
    try:
        from phonemizer.backend import EspeakBackend

        return bool(EspeakBackend.is_available())
    except Exception:
        return False


def phonemize(sentences: list[str], language: str = "en-us") -> list[str]:
    """IPA with stress for normalized sentences (espeak-ng)."""
    if not espeak_available():
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    with _ESPEAK_LOCK:  # the espeak library keeps global state
        return _espeak(language).phonemize(list(sentences), strip=True, njobs=1)


@dataclass(frozen=True)
class TextFrontend:
    """What a model's text input is: phonemes (default) or characters, over a symbol table."""

    mode: str = "phoneme"  # "phoneme" | "char"
    language: str = "en-us"
    symbols: SymbolTable = SymbolTable()

    def __post_init__(self):
        if self.mode not in ("phoneme", "char"):
            raise ValueError(f"unknown text mode {self.mode!r} (phoneme or char)")

    @classmethod
    def default(cls) -> "TextFrontend":
        """Phonemes when espeak-ng is installed, otherwise characters with a warning."""
        if espeak_available():
            return cls("phoneme")
        warnings.warn("espeak-ng not found: using characters instead of phonemes "
                      "(install it with apt-get install espeak-ng)")
        return cls("char")

    def units(self, sentences: list[str]) -> list[str]:
        """Normalized sentences -> the symbol strings the model reads."""
        if self.mode == "char":
            return [s.lower() for s in sentences]
        return phonemize(sentences, self.language)

    def encode(self, sentences: list[str]) -> list[list[int]]:
        return [self.symbols.encode(u) for u in self.units(sentences)]

    def to_dict(self) -> dict:
        return {"mode": self.mode, "language": self.language, "symbols": self.symbols.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "TextFrontend":
        frontend = cls(data["mode"], data["language"], SymbolTable.from_dict(data["symbols"]))
        if frontend.mode == "phoneme" and not espeak_available():
            raise RuntimeError("this model reads phonemes, and espeak-ng is not installed "
                               "(apt-get install espeak-ng)")
        return frontend


def transcript_prefix(transcript: str, heard: str) -> str:
    """The words of `transcript` that a cut clip still says, given what an ASR heard in the cut clip:
    the prefix of the transcript's words at the smallest word edit distance from the heard words."""
    def words(text: str) -> list[str]:
        return re.findall(r"[\w']+", text.lower())

    given, said = transcript.split(), words(heard)
    keys = [" ".join(words(w)) for w in given]
    previous = list(range(len(given) + 1))  # distance of said[:0] to each prefix of given
    for i, word in enumerate(said, start=1):
        row = [i]
        for j, key in enumerate(keys, start=1):
            row.append(min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (key != word)))
        previous = row
    best = min(range(len(previous)), key=lambda j: (previous[j], -j))
    return " ".join(given[:best])
