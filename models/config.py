"""One way to read a configuration section (a YAML section, a checkpoint's config.json) into a
config dataclass: known keys only, an unknown key refused with one line naming it and where it came
from; YAML lists become tuples where the field is a tuple; a field whose type is itself a config
dataclass (for instance a model's `fitted` statistics) is read from its sub-mapping the same way.

Hyperparameters are what a person chooses in a YAML. Statistics a training recipe measures on the
data (latent mean and std, text rate, ...) live apart, under the model config's `fitted` field, so a
YAML never sets them (`refuse_fitted`) and a checkpoint's config.json shows which is which.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, fields
from typing import ClassVar, TypeVar

from models.roles import LATENT_CODEC

T = TypeVar("T")
FITTED = "fitted"


def parse_config(cls: type[T], data: dict, source: str = "config") -> T:
    """`cls(**data)`, checked. `model` (the builder's name, which every section may carry) is skipped."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    known = {f.name: str(f.type) for f in fields(cls) if f.init}
    unknown = sorted(set(data) - set(known) - {"model"})
    if unknown:
        raise ValueError(f"{source}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if key not in known:
            continue
        if dataclasses.is_dataclass(hints.get(key)) and isinstance(value, dict):
            value = parse_config(hints[key], value, f"{source}: {key}")
        elif isinstance(value, list) and known[key].startswith("tuple"):
            value = tuple(value)
        values[key] = value
    try:
        return cls(**values)
    except TypeError as error:  # e.g. a required setting missing
        raise ValueError(f"{source}: {error}") from None


def refuse_fitted(data: dict, source: str) -> None:
    """A YAML model section names hyperparameters only; fitted statistics are measured in training."""
    if FITTED in data:
        raise ValueError(f"{source}: '{FITTED}' holds statistics the training recipe measures on the data; "
                         "a config does not set them")


def move_to_fitted(data: dict, names: tuple[str, ...]) -> dict:
    """A copy of a config mapping with top-level `names` moved under `fitted`: how checkpoints written
    before statistics had their own section (the shipped v1 checkpoints) load unchanged."""
    legacy = {name: data[name] for name in names if name in data}
    if not legacy:
        return data
    data = {k: v for k, v in data.items() if k not in legacy}
    data[FITTED] = {**legacy, **(data.get(FITTED) or {})}
    return data


class ModelConfig:
    """The base of every model's config dataclass: `from_dict` reads a YAML section or a checkpoint's
    config.json (parse_config) and runs `check`, the rules between settings; `to_dict` writes it back."""

    label: ClassVar[str] = "model"  # how error messages name the source by default
    # The checkpoints this model composes, by setting name and role (models.roles), e.g. a TTS's codec: what
    # a pipeline loads by name, and what tests replace with tiny checkpoints of the same role.
    STAGES: ClassVar[dict[str, str]] = {}
    legacy_fitted: ClassVar[tuple[str, ...]] = ()  # keys older checkpoints kept at the top level (move_to_fitted)

    @classmethod
    def from_dict(cls, data: dict, source: str | None = None):
        source = source or f"{cls.label} config"
        if cls.legacy_fitted and isinstance(data, dict):
            data = move_to_fitted(data, cls.legacy_fitted)
        config = parse_config(cls, data, source)
        config.check(source)
        return config

    def check(self, source: str) -> None:
        """Raise ValueError naming `source` and the problem when settings contradict each other."""

    def serves_role(self) -> bool:
        """Whether a checkpoint with these settings does its role's job, and so belongs in that role's menus
        (an unconditional pre-trained Metis T2S reads no text: a stage of a TTS, not one)."""
        return True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class LatentStatistics:
    """What a model of latent sequences (SLED, KALL-E) fits on its training data, never chosen:
    measured by its recipe and stored under the config's `fitted`."""

    latent_mean: list[float] | None = None  # per dimension, of the training latents: the normalization
    latent_std: list[float] | None = None
    text_rate: float | None = None  # latent frames per text symbol, for aligned positions


@dataclass
class LatentLMConfig(ModelConfig):
    """The settings every language model over codec latents (SLED, KALL-E) has; a model's config adds its
    own (and may change a default by redeclaring the field)."""

    STAGES: ClassVar[dict[str, str]] = {"codec": LATENT_CODEC}

    codec: str = "flow_vae"  # the Flow-VAE checkpoint whose latents are modelled
    latent_dim: int = 64
    frontend: dict | None = None  # TextFrontend.to_dict(); None = the default frontend
    dim: int = 256
    layers: int = 6
    heads: int = 4
    ff_mult: int = 4
    dropout: float = 0.1
    text_dropout: float = 0.1  # classifier-free guidance: text replaced by the null token
    prompt_pairs: float = 0.5  # fraction of training sequences that are two utterances of one voice
    # Aligned positions: text token i sits at RoPE position i x fitted.text_rate (latent frames per
    # text token in the training data) and latent frame k at k, so the text a frame speaks is near
    # relative offset 0 whatever the text's length.
    aligned_positions: bool = False
    # Training pairs with the prompt's transcript aligned on the prompt's own frames and the second text
    # starting where the prompt ends (models.modules.positions' anchor, the `anchor_prompt` control at
    # inference); off: all text at the mean rate, so anchoring at inference is out of distribution.
    anchored_pairs: bool = False
    # Std of Gaussian noise on the (normalized) latents fed back as history, in training only. The
    # Flow-VAE encoder is non-causal, so clean past latents already carry much of the next frame: without
    # noise a small model learns to continue the history, leans little on the text, and babbles when
    # free-running (docs/sled.md).
    history_noise: float = 0.0
    # Generation cap: 20 + this x the new text's symbols; well above the corpus's frames per symbol, so it
    # only cuts runs that failed to end.
    frames_per_phoneme: float = 2.5
    fitted: LatentStatistics = field(default_factory=LatentStatistics)

    def check(self, source: str) -> None:
        if self.anchored_pairs and not self.aligned_positions:
            raise ValueError(f"{source}: anchored_pairs places text by frames, so it needs aligned_positions")
