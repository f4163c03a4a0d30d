"""What every pipeline shares: the settings each request takes beside a backend's own controls (one
declared range each), and the resident model behind a checkpoint name of a given role."""

from __future__ import annotations

import threading

from models import registry
from models.roles import (
    ACOUSTIC_DECODER,
    LATENT_CODEC,
    SEMANTIC_TOKENIZER,
    SPEECH_TO_SPEECH,
    TEST_TIME_TRAINING,
    TOKEN_CODEC,
    TTS,
    Control,
)

MAX_SEED = 2**32 - 1
TTT_LR = 3e-5  # the test-time training sweep's choice (docs/kalle.md); the paper's 1e-6 barely moves our model
TTS_VOCODER_PRECISION = "bf16"  # 2x faster synthesis, same PESQ (see models.vocoder.PRECISIONS)
# The settings every TTS request takes, beside a backend's own CONTROLS: one declared range each, shared by the
# studio's widgets, the CLI's flags and the evaluation system specs (`name=model:cfg=2:seed=3:ttt=50`).
SETTINGS = {
    "cfg": Control("Classifier-free guidance scale", 1.0, 10.0, 2.0, 0.1),  # 1 = none; the papers' best: 2-3
    "seed": Control("Seed", 0, MAX_SEED, 0, 1),
    "ttt": Control("Test-time training samples (N)", 1, 2000, 200, 1),
    "ttt_lr": Control("Test-time training learning rate", 1e-7, 1e-2, TTT_LR, 1e-7),
    "level_reference": Control("Trim and level the reference like the corpus's clips (1) or not (0)", 0, 1, 1, 1),
}
CFG_RANGE = (SETTINGS["cfg"].minimum, SETTINGS["cfg"].maximum)
TTT_LR_RANGE = (SETTINGS["ttt_lr"].minimum, SETTINGS["ttt_lr"].maximum)
ROLE_NAMES = {LATENT_CODEC: "codec", TOKEN_CODEC: "token codec", TTS: "TTS model",
              SPEECH_TO_SPEECH: "speech-to-speech model", ACOUSTIC_DECODER: "acoustic decoder",
              SEMANTIC_TOKENIZER: "semantic tokenizer"}


def check_sampling(cfg: float, seed: int | None) -> int | None:
    """One clear line for a guidance scale or seed out of range (NaN included); returns the seed as an int."""
    SETTINGS["cfg"].check("the guidance scale (cfg)", cfg)
    return None if seed is None else check_seed(seed)


def check_seed(seed) -> int:
    """A seed as typed (3, 3.0, "3") -> int; 3.7, "abc", NaN or one out of range is one line, never rounded."""
    try:
        number = float(seed)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(seed, bool) or not (number.is_integer() and 0 <= number <= MAX_SEED):
        raise ValueError(f"the seed must be a whole number from 0 to {MAX_SEED}, not {seed!r}")
    return int(number)


def check_controls(model: str, declared: dict[str, Control], controls: dict[str, float]) -> dict[str, float]:
    """Every declared control's value (given or default), each checked against its range; an undeclared
    one is one line naming what the backend does take."""
    unknown = sorted(set(controls) - set(declared))
    if unknown:
        raise ValueError(f"{model} has no setting {unknown[0]!r} (its settings: {', '.join(declared) or 'none'})")
    return {name: control.check(name, controls.get(name, control.default)) for name, control in declared.items()}


def require_role(name: str, role: str, builtins: tuple[str, ...] = ()) -> None:
    kind = registry.checkpoint_kind(name)
    if kind is None:
        also = f"not one of {', '.join(builtins)}, and " if builtins else ""
        raise ValueError(f"unknown {ROLE_NAMES[role]} {name!r}: {also}no checkpoint by that name or folder")
    if registry.checkpoint_role(name) != role:
        raise ValueError(f"checkpoint {name!r} is a {kind} model, not a {ROLE_NAMES[role]}")


def checkpoint_model(name: str, role: str, device: str | None, builtins: tuple[str, ...] = ()):
    """The resident (model, config) behind a checkpoint name or folder of `role`; one clear line
    naming the role for anything else."""
    require_role(name, role, builtins)
    model, config, _ = registry.load_model(name, device)
    return model, config


def declared(name: str, role: str, member: str, default):
    """What a checkpoint's model class declares (CONTROLS, CAPABILITIES), read without loading it."""
    require_role(name, role)
    return getattr(registry.model_class(registry.checkpoint_kind(name)), member, default)


def turn(backend):
    """The lock a backend's generations take turns on, when it can be adapted (test-time training
    changes its resident weights while adapted, so no request may see another's voice); else None."""
    if TEST_TIME_TRAINING not in getattr(backend, "CAPABILITIES", frozenset()):
        return None
    return registry.resident(("turn", id(backend)), threading.Lock)
