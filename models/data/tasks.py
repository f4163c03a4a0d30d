"""Task sets made from a corpus: speech enhancement (SE), target speaker extraction (TSE)
and voice conversion (VC), each a JSONL manifest per split with a fixed seed.

SE   noisy = reverb?(clean) + noise at an SNR drawn from [-5, 20] dB; the target is the dry
     clean speech. The test split uses only noise recipes that training never saw.
TSE  mixture = target + interferer (another person) at an SIR drawn from [-5, 5] dB, plus an
     enrollment utterance of the target voice reading a different sentence.
VC   (source utterance, reference of another voice, ground truth = that voice reading the
     source sentence when the corpus has it: always for test sentences, which every voice reads).
The `real` split, when the corpus has its real-speech set (eval/real_speech.jsonl, recordings of
people): SE on each recording under the test noise recipes; TSE of each recording under another
person's, enrolled with the speaker's other recording; VC to each real voice from a held-out
corpus utterance and from each real recording to a held-out corpus voice (no ground truth: SIM is
to the reference clip).
Paths in a manifest are relative to the manifest's folder. Finished items are skipped on
a rerun, and every file is written through a temp file and a rename.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve

from models import audio
from models.data import manifest as mf

SR = audio.SAMPLE_RATE
SNR_RANGE = (-5.0, 20.0)
SIR_RANGE = (-5.0, 5.0)
REVERB_PROBABILITY = 0.3
RT60_RANGE = (0.2, 0.8)
RECORDED_NOISES = ("/usr/share/sounds/alsa/Noise.wav",)  # Debian alsa-utils (GPL-2+)
# Recipes per split: the test recipes differ from every training recipe.
NOISE_RECIPES = {
    "train": ("white", "pink", "babble3", "hum50"),
    "valid": ("white", "pink", "babble3", "hum50"),
    "test": ("brown", "babble6", "hum60", "recorded"),
    "real": ("brown", "babble6", "hum60", "recorded"),
}
SPLIT_SOURCES = {"train": ("train",), "valid": ("valid",), "test": ("test", "heldout")}


@dataclass(frozen=True)
class TaskSizes:
    """Items per split (capped by what the corpus holds)."""

    train: int = 4000
    valid: int = 200
    test: int = 300


# ------------------------------------------------------------------ signals


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def ratio_db(signal: np.ndarray, other: np.ndarray) -> float:
    return 10 * np.log10(power(signal) / max(power(other), 1e-20))


def scale_to_ratio(signal: np.ndarray, other: np.ndarray, ratio: float) -> np.ndarray:
    """`other` scaled so that 10 log10(P_signal / P_other) == ratio (dB)."""
    return other * np.sqrt(power(signal) / (max(power(other), 1e-20) * 10 ** (ratio / 10)))


def fit_length(x: np.ndarray, n: int, rng: random.Random, loop: bool) -> np.ndarray:
    """Crop at a random offset, or extend to n samples (looping noise, zero-padding speech)."""
    if len(x) >= n:
        start = rng.randrange(len(x) - n + 1)
        return x[start : start + n]
    if loop:
        return np.tile(x, n // len(x) + 1)[:n]
    out = np.zeros(n, np.float32)
    start = rng.randrange(n - len(x) + 1)
    out[start : start + len(x)] = x
    return out


def colored_noise(n: int, exponent: float, rng: random.Random) -> np.ndarray:
    """Noise with power spectral density proportional to 1/f^exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(np.random.default_rng(rng.randrange(2**32)).standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    return np.fft.irfft(spectrum / freqs ** (exponent / 2), n).astype(np.float32)


def hum(n: int, mains_hz: float, rng: random.Random) -> np.ndarray:
    """Mains hum: the fundamental and odd-heavy harmonics, over a little hiss."""
    t = np.arange(n) / SR
    gen = np.random.default_rng(rng.randrange(2**32))
    tone = sum(np.sin(2 * np.pi * mains_hz * k * t + gen.uniform(0, 2 * np.pi)) / k for k in range(1, 8))
    return (tone + 0.05 * gen.standard_normal(n)).astype(np.float32)


def room_impulse_response(rt60: float, rng: random.Random) -> np.ndarray:
    """Synthetic RIR: a direct path, then exponentially decaying noise (-60 dB at rt60)."""
    n = int(rt60 * SR)
    t = np.arange(n) / SR
    tail = np.random.default_rng(rng.randrange(2**32)).standard_normal(n) * np.exp(-6.908 * t / rt60)
    tail[: int(0.002 * SR)] = 0.0  # early gap before the first reflections
    rir = 0.3 * tail / np.sqrt(np.sum(tail**2))
    rir[0] = 1.0
    return rir.astype(np.float32)


def make_noise(recipe: str, n: int, rng: random.Random, babble_pool: list[np.ndarray]) -> np.ndarray:
    if recipe in ("white", "pink", "brown"):
        return colored_noise(n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[recipe], rng)
    if recipe.startswith("hum"):
        return hum(n, float(recipe[3:]), rng)
    if recipe.startswith("babble"):
        talkers = rng.sample(babble_pool, k=min(int(recipe[6:]), len(babble_pool)))
        return sum(fit_length(t / np.sqrt(power(t) + 1e-12), n, rng, loop=True) for t in talkers)
    if recipe == "recorded":
        noise = audio.load_audio(rng.choice(_recorded_noises()), SR, max_seconds=None)
        return fit_length(noise, n, rng, loop=True)
    raise ValueError(f"unknown noise recipe {recipe!r}")


def _recorded_noises() -> list[str]:
    found = [p for p in RECORDED_NOISES if os.path.isfile(p)]
    if not found:
        raise FileNotFoundError("no recorded noise: apt-get install alsa-utils (it ships Noise.wav)")
    return found


def _peak_safe(*signals: np.ndarray) -> tuple[np.ndarray, ...]:
    """Scale all signals by one gain so the first (the mixture) stays below 0.99: ratios hold."""
    top = float(np.max(np.abs(signals[0])))
    gain = 0.99 / top if top > 0.99 else 1.0
    return tuple((s * gain).astype(np.float32) for s in signals)


# ---------------------------------------------------------------- task sets


def build_tasks(corpus_dir: str | Path, out_dir: str | Path, seed: int = 0, sizes: TaskSizes = TaskSizes(),
                log=print) -> dict:
    """Write enhancement/, tse/ and vc/ manifests (and audio) under out_dir; returns counts."""
    from tqdm import tqdm

    if min(sizes.train, sizes.valid, sizes.test) < 0:
        raise ValueError(f"item counts must not be negative: {sizes}")
    corpus_manifest = Path(corpus_dir) / "manifest.jsonl"
    if not corpus_manifest.is_file():
        raise FileNotFoundError(f"no corpus manifest at {corpus_manifest} (run: speech-studio corpus build)")
    rows = mf.read_jsonl(corpus_manifest)
    for row in rows:
        row["abs_path"] = str(mf.resolve_audio(corpus_manifest, row["path"]))
    out = Path(out_dir)
    counts = {}
    for split, sources in SPLIT_SOURCES.items():
        pool = [r for r in rows if r["split"] in sources]
        if not pool:
            log(f"no {split} utterances in the corpus: skipping that split")
            continue
        n = min(getattr(sizes, split), len(pool))
        items = [("enhancement", i) for i in range(n)] + [("tse", i) for i in range(n)] + [("vc", i) for i in range(n)]
        built = {"enhancement": [], "tse": [], "vc": []}
        for task, index in tqdm(items, desc=f"{split} tasks", unit="item"):
            item_rng = random.Random(f"{seed}/{split}/{task}/{index}")
            maker = {"enhancement": _enhancement_item, "tse": _tse_item, "vc": _vc_item}[task]
            row = maker(index, pool, split, item_rng, out / task)
            if row is not None:
                built[task].append(row)
        for task, task_rows in built.items():
            mf.write_jsonl(out / task / f"{split}.jsonl", task_rows)
            counts[f"{task}/{split}"] = len(task_rows)
    real_manifest = Path(corpus_dir) / "eval" / "real_speech.jsonl"
    if real_manifest.is_file():
        counts.update(_build_real(real_manifest, rows, out, seed))
    mf.write_text_atomic(out / "tasks.json", json.dumps({"corpus": str(Path(corpus_dir).resolve()), "seed": seed,
                                                         "counts": counts}, indent=2) + "\n")
    return counts


def _build_real(real_manifest: Path, rows: list[dict], out: Path, seed: int) -> dict:
    """The `real` split: every recording of a person in noise, under another person's voice, and converted
    to and from a held-out voice."""
    real = [{"id": r["id"], "speaker": r["speaker"], "normalized_text": r["text"],
             "abs_path": str(mf.resolve_audio(real_manifest, r["gt_wav"]))} for r in mf.read_jsonl(real_manifest)]
    heldout = [r for r in rows if r["split"] == "heldout"] or [r for r in rows if r["split"] == "test"]
    enhancement, conversion, extraction = [], [], []
    for index, recording in enumerate(real):
        rng = random.Random(f"{seed}/real/enhancement/{index}")
        enhancement.append(_enhancement_item(index, real, "real", rng, out / "enhancement", source=recording))
        rng = random.Random(f"{seed}/real/vc/{index}")
        others = [r for r in real if r["speaker"] == recording["speaker"] and r["id"] != recording["id"]]
        if others and heldout:  # to this real voice (its other recording as the reference) from a held-out one
            conversion.append(_vc_pair(f"vc-real-{2 * index:05d}", "real", rng.choice(heldout), rng.choice(others),
                                       out / "vc"))
        if heldout:  # from this recording to a held-out corpus voice
            conversion.append(_vc_pair(f"vc-real-{2 * index + 1:05d}", "real", recording, rng.choice(heldout),
                                       out / "vc"))
        rng = random.Random(f"{seed}/real/tse/{index}")
        interferers = [r for r in real if r["speaker"] != recording["speaker"]]
        if others and interferers:  # this recording under another person's, its other recording as enrollment
            extraction.append(_tse_mixture(f"tse-real-{index:05d}", "real", recording, rng.choice(others),
                                           rng.choice(interferers), rng, out / "tse"))
    mf.write_jsonl(out / "enhancement" / "real.jsonl", enhancement)
    mf.write_jsonl(out / "vc" / "real.jsonl", conversion)
    mf.write_jsonl(out / "tse" / "real.jsonl", extraction)
    return {"enhancement/real": len(enhancement), "vc/real": len(conversion), "tse/real": len(extraction)}


def _vc_pair(item_id: str, split: str, source: dict, reference: dict, folder: Path) -> dict:
    return {"id": item_id, "split": split, "text": source["normalized_text"], "source_speaker": source["speaker"],
            "target_speaker": reference["speaker"], "source": _rel(source["abs_path"], folder),
            "reference": _rel(reference["abs_path"], folder), "ground_truth": None}


def _rel(path: str | Path, folder: Path) -> str:
    return os.path.relpath(path, folder)


def _write_pair(folder: Path, item_id: str, signals: dict[str, np.ndarray]) -> dict[str, str]:
    """Save each signal as audio/<id>_<name>.flac unless already there; relative paths back."""
    paths = {}
    for name, signal in signals.items():
        path = folder / "audio" / f"{item_id}_{name}.flac"
        if not path.is_file():
            audio.save_audio(path, signal, SR)
        paths[name] = _rel(path, folder)
    return paths


def _enhancement_item(index, pool, split, rng, folder, source=None):
    source = source or rng.choice(pool)
    item_id = f"se-{split}-{index:05d}"
    recipe = rng.choice(NOISE_RECIPES[split])
    snr = round(rng.uniform(*SNR_RANGE), 2)
    rt60 = round(rng.uniform(*RT60_RANGE), 2) if rng.random() < REVERB_PROBABILITY else None
    row = {"id": item_id, "split": split, "noise": recipe, "snr_db": snr, "rt60": rt60,
           "speaker": source["speaker"], "text": source["normalized_text"], "source_id": source["id"]}
    done = folder / "audio" / f"{item_id}_noisy.flac"
    if done.is_file() and (folder / "audio" / f"{item_id}_clean.flac").is_file():
        return {**row, "clean": _rel(folder / "audio" / f"{item_id}_clean.flac", folder), "noisy": _rel(done, folder)}
    clean = audio.load_audio(source["abs_path"], SR, max_seconds=None)
    speech = fftconvolve(clean, room_impulse_response(rt60, rng))[: len(clean)] if rt60 else clean
    others = [r for r in pool if r["speaker"] != source["speaker"]] or pool
    babble = [audio.load_audio(r["abs_path"], SR, max_seconds=None)
              for r in rng.sample(others, k=min(6, len(others)))] \
        if recipe.startswith("babble") else []
    noise = scale_to_ratio(speech, make_noise(recipe, len(clean), rng, babble), snr)
    noisy, clean = _peak_safe(speech + noise, clean)
    return {**row, **_write_pair(folder, item_id, {"clean": clean, "noisy": noisy})}


def _tse_item(index, pool, split, rng, folder):
    target = rng.choice(pool)
    voice = target["id"].rsplit("_", 1)[0]
    enrollments = [r for r in pool
                   if r["id"].rsplit("_", 1)[0] == voice and r["normalized_text"] != target["normalized_text"]]
    interferers = [r for r in pool if r["speaker"] != target["speaker"]]
    if not enrollments or not interferers:
        return None
    enrollment, interferer = rng.choice(enrollments), rng.choice(interferers)
    return _tse_mixture(f"tse-{split}-{index:05d}", split, target, enrollment, interferer, rng, folder)


def _tse_mixture(item_id, split, target, enrollment, interferer, rng, folder):
    """The target utterance and the interferer's (cropped or padded to its length) at an SIR drawn from
    SIR_RANGE."""
    sir = round(rng.uniform(*SIR_RANGE), 2)
    row = {"id": item_id, "split": split, "sir_db": sir, "target_speaker": target["speaker"],
           "interferer_speaker": interferer["speaker"], "text": target["normalized_text"],
           "target_id": target["id"], "interferer_id": interferer["id"],
           "enrollment": _rel(enrollment["abs_path"], folder), "interferer": _rel(interferer["abs_path"], folder)}
    done = [folder / "audio" / f"{item_id}_{n}.flac" for n in ("mixture", "target")]
    if all(p.is_file() for p in done):
        return {**row, "mixture": _rel(done[0], folder), "target": _rel(done[1], folder)}
    clean = audio.load_audio(target["abs_path"], SR, max_seconds=None)
    other = fit_length(audio.load_audio(interferer["abs_path"], SR, max_seconds=None), len(clean), rng, loop=False)
    other = scale_to_ratio(clean, other, sir)
    mixture, clean = _peak_safe(clean + other, clean)
    return {**row, **_write_pair(folder, item_id, {"mixture": mixture, "target": clean})}


def _vc_item(index, pool, split, rng, folder):
    source = rng.choice(pool)
    voices = {}
    for r in pool:
        if r["speaker"] != source["speaker"]:
            voices.setdefault(r["id"].rsplit("_", 1)[0], []).append(r)
    if not voices:
        return None
    target_voice = rng.choice(sorted(voices))
    same_text = [r for r in voices[target_voice] if r["normalized_text"] == source["normalized_text"]]
    references = [r for r in voices[target_voice] if r["normalized_text"] != source["normalized_text"]]
    if not references:
        return None
    reference = rng.choice(references)
    return {"id": f"vc-{split}-{index:05d}", "split": split, "text": source["normalized_text"],
            "source_speaker": source["speaker"], "target_speaker": reference["speaker"],
            "source": _rel(source["abs_path"], folder), "reference": _rel(reference["abs_path"], folder),
            "ground_truth": _rel(same_text[0]["abs_path"], folder) if same_text else None}


# Each audio field of a task row, and the row field naming whose voice it is.
AUDIO_FIELDS = {"clean": "speaker", "noisy": "speaker", "mixture": "target_speaker", "target": "target_speaker",
                "enrollment": "target_speaker",
                "interferer": "interferer_speaker", "source": "source_speaker", "reference": "target_speaker",
                "ground_truth": "target_speaker"}


def audio_manifest(tasks_dir: str | Path) -> Path:
    """tasks_dir/audio.jsonl: one corpus-style row per distinct audio file of the task sets, so that the
    feature caches built for a corpus (models.data.dataset.SpeechDataset) serve task audio too. The id is
    the file's path from the data folder without its suffix (`task_audio_id`); rebuilt when a task
    manifest is newer."""
    import soundfile

    folder = Path(tasks_dir)
    manifests = sorted(folder.glob("*/*.jsonl"))
    if not manifests:
        raise FileNotFoundError(f"no task manifests under {folder} (run: speech-studio corpus tasks)")
    out = folder / "audio.jsonl"
    if out.is_file() and out.stat().st_mtime >= max(m.stat().st_mtime for m in manifests):
        return out
    rows: dict[str, dict] = {}
    for task_manifest in manifests:
        for row in mf.read_jsonl(task_manifest):
            for field, voice in AUDIO_FIELDS.items():
                if not row.get(field):
                    continue
                path = (task_manifest.parent / row[field]).resolve()
                if not path.is_file():
                    raise FileNotFoundError(f"{task_manifest}: {row.get('id')}'s {field} {row[field]} is missing "
                                            "(rerun: speech-studio corpus tasks)")
                key = task_audio_id(folder, path)
                if key not in rows:
                    rows[key] = {"id": key, "split": row["split"], "speaker": row.get(voice) or "unknown",
                                 "path": _rel(path, folder), "duration": round(soundfile.info(path).duration, 3)}
    mf.write_jsonl(out, rows.values())
    return out


def task_audio_id(tasks_dir: str | Path, path: str | Path) -> str:
    """The id of a task-set audio file in `audio_manifest`: its path from the data folder, without suffix."""
    relative = Path(os.path.relpath(Path(path).resolve(), Path(tasks_dir).resolve().parent)).with_suffix("")
    return "/".join("parent" if part == ".." else part for part in relative.parts)
