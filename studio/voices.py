"""Saved voices: the voice seeds a visitor named, kept in that visitor's own browser (a Gradio
BrowserState, so they survive a reload and no other visitor sees or overwrites them), beside an
optional shared library that the operator provides as a JSON file (read-only in the studio)."""

from __future__ import annotations

import json
from pathlib import Path

from models import pipelines

MAX_SAVED_VOICES = 50  # per visitor
MAX_LIBRARY_VOICES = 200
MAX_NAME_CHARS = 60
SHARED = " (shared)"  # the menu's mark of a library voice


def clean_name(name) -> str:
    name = " ".join(str(name or "").split())
    if not name or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"a saved voice needs a name of 1-{MAX_NAME_CHARS} characters")
    if name.endswith(SHARED.strip()):
        raise ValueError(f"a saved voice's name may not end in {SHARED.strip()!r} (it marks the shared library)")
    return name


def check_seed(voice_seed) -> int:
    try:
        return pipelines.check_seed(voice_seed)
    except ValueError:
        raise ValueError(f"a voice seed is a whole number from 0 to {pipelines.MAX_SEED}, not {voice_seed!r}") from None


def _held(voices) -> dict:
    """The visitor's saved voices as they hold them (an API client passes its own): a JSON object."""
    if voices is None:
        return {}
    if not isinstance(voices, dict):
        raise ValueError("saved voices are a JSON object of name -> voice seed")
    return voices


def save(voices: dict | None, name, voice_seed) -> dict[str, int]:
    """The visitor's voices with `name` -> `voice_seed` added (or replaced); at most MAX_SAVED_VOICES."""
    voices, name = dict(_held(voices)), clean_name(name)
    seed = check_seed(voice_seed)
    if name not in voices and len(voices) >= MAX_SAVED_VOICES:
        raise ValueError(f"this browser holds {MAX_SAVED_VOICES} saved voices, the most it keeps: "
                         "save under an existing name to replace that voice")
    voices[name] = seed
    return voices


def menu(voices: dict | None, library: dict[str, int]) -> list[str]:
    """The Saved voices menu: the visitor's own, then the shared library's (marked)."""
    return sorted(str(name) for name in _held(voices)) + [name + SHARED for name in sorted(library)]


def pick(voices: dict | None, library: dict[str, int], choice: str) -> int:
    """The voice seed a menu entry stands for; an unknown name is one line that lists nothing."""
    if choice and choice.endswith(SHARED) and choice[: -len(SHARED)] in library:
        return library[choice[: -len(SHARED)]]
    voices = _held(voices)
    if isinstance(choice, str) and choice in voices:
        return check_seed(voices[choice])
    raise ValueError(f"no saved voice named {str(choice)[:MAX_NAME_CHARS]!r} in this browser")


def read_library(path: str | Path | None) -> dict[str, int]:
    """The operator's shared library: a JSON object of name -> voice seed, checked when the studio starts."""
    if path is None:
        return {}
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"voice library {path}: not a readable JSON file ({error})") from None
    if not isinstance(entries, dict):
        raise ValueError(f"voice library {path}: a JSON object of name -> voice seed is expected")
    if len(entries) > MAX_LIBRARY_VOICES:
        raise ValueError(f"voice library {path}: {len(entries)} voices, more than the {MAX_LIBRARY_VOICES} it may hold")
    try:
        return {clean_name(name): check_seed(seed) for name, seed in entries.items()}
    except ValueError as error:
        raise ValueError(f"voice library {path}: {error}") from None
