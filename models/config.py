"""One way to read a configuration section (a YAML section, a checkpoint's config.json) into a
config dataclass: known keys only, an unknown key refused with one line naming it and where it came
from; YAML lists become tuples where the field is a tuple."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

T = TypeVar("T")


def parse_config(cls: type[T], data: dict, source: str = "config") -> T:
    """`cls(**data)`, checked. `model` (the builder's name, which every section may carry) is skipped."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    known = {f.name: str(f.type) for f in fields(cls) if f.init}
    unknown = sorted(set(data) - set(known) - {"model"})
    if unknown:
        raise ValueError(f"{source}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    values = {k: tuple(v) if isinstance(v, list) and known[k].startswith("tuple") else v
              for k, v in data.items() if k in known}
    try:
        return cls(**values)
    except TypeError as error:  # e.g. a required setting missing
        raise ValueError(f"{source}: {error}") from None
