import numpy as np
import pytest

from models.audio import load_audio
from models.data import manifest as mf
from models.data import tasks

SIZES = tasks.TaskSizes(train=12, valid=4, test=12)


@pytest.fixture(scope="module")
def task_dir(mini, tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    tasks.build_tasks(mini[0], out, seed=0, sizes=SIZES, log=lambda _: None)
    return out


def _load(manifest, row, key):
    return load_audio(mf.resolve_audio(manifest, row[key]), max_seconds=None)


def _ratio_of_parts(manifest, row, part, mixture):
    """dB ratio of a written part to the rest of the written mixture (mixture - part)."""
    part, mixture = _load(manifest, row, part), _load(manifest, row, mixture)
    assert len(part) == len(mixture)
    return tasks.ratio_db(part, mixture - part)


def test_enhancement_pairs_hit_the_requested_snr(task_dir):
    seen = {"train": set(), "test": set()}
    for split in ("train", "valid", "test"):
        manifest = task_dir / "enhancement" / f"{split}.jsonl"
        for row in mf.read_jsonl(manifest):
            assert tasks.SNR_RANGE[0] <= row["snr_db"] <= tasks.SNR_RANGE[1]
            seen.setdefault(split, set()).add(row["noise"])
            if row["rt60"] is None:  # the residual is exactly the noise
                assert abs(_ratio_of_parts(manifest, row, "clean", "noisy") - row["snr_db"]) < 0.5
    assert not seen["test"] & set(tasks.NOISE_RECIPES["train"])  # unseen noise recipes at test time


def test_extraction_mixtures_hit_the_requested_sir(task_dir):
    manifest = task_dir / "tse" / "test.jsonl"
    rows = mf.read_jsonl(manifest)
    assert rows
    for row in rows:
        assert row["target_speaker"] != row["interferer_speaker"]
        assert abs(_ratio_of_parts(manifest, row, "target", "mixture") - row["sir_db"]) < 0.5
        assert mf.resolve_audio(manifest, row["enrollment"]).is_file()
        assert row["enrollment"].rsplit("/", 1)[1] != row["target_id"].rsplit("_", 1)[1] + ".wav"
        assert mf.resolve_audio(manifest, row["interferer"]).is_file()  # for SIM to the interferer


def test_conversion_triples(task_dir):
    manifest = task_dir / "vc" / "test.jsonl"
    rows = mf.read_jsonl(manifest)
    assert rows
    for row in rows:
        assert row["source_speaker"] != row["target_speaker"]
        for key in ("source", "reference"):
            assert mf.resolve_audio(manifest, row[key]).is_file()
        # Test sentences are read by every voice, so the ground truth always exists there.
        truth = mf.resolve_audio(manifest, row["ground_truth"])
        assert truth.is_file() and truth.name == mf.resolve_audio(manifest, row["source"]).name


def test_the_real_split_puts_every_recording_in_noise_and_converts_to_and_from_real_voices(task_dir, mini):
    real = mf.read_jsonl(mini[0] / "eval" / "real_speech.jsonl")
    noisy = mf.read_jsonl(task_dir / "enhancement" / "real.jsonl")
    assert sorted(row["source_id"] for row in noisy) == sorted(row["id"] for row in real)
    assert {row["noise"] for row in noisy} <= set(tasks.NOISE_RECIPES["test"])
    speakers = {row["speaker"] for row in real}
    converted = mf.read_jsonl(task_dir / "vc" / "real.jsonl")
    to_real = [row for row in converted if row["target_speaker"] in speakers]
    from_real = [row for row in converted if row["source_speaker"] in speakers]
    assert to_real and len(from_real) == len(real) and not {r["id"] for r in to_real} & {r["id"] for r in from_real}
    for row in to_real:  # the reference is the speaker's other recording
        assert row["source_speaker"] not in speakers and row["ground_truth"] is None
        assert mf.resolve_audio(task_dir / "vc" / "real.jsonl", row["reference"]).is_file()
    # extraction: each recording whose speaker has another (the enrollment) under another person's voice
    manifest = task_dir / "tse" / "real.jsonl"
    mixed = mf.read_jsonl(manifest)
    by_id = {row["id"]: row for row in real}
    paired = [row for row in real if sum(r["speaker"] == row["speaker"] for r in real) > 1]
    assert sorted(row["target_id"] for row in mixed) == sorted(row["id"] for row in paired)
    for row in mixed:
        assert by_id[row["interferer_id"]]["speaker"] != row["target_speaker"] == by_id[row["target_id"]]["speaker"]
        recordings = {r["id"]: mf.resolve_audio(mini[0] / "eval" / "real_speech.jsonl", r["gt_wav"]).resolve()
                      for r in real if r["speaker"] == row["target_speaker"]}
        enrollment = mf.resolve_audio(manifest, row["enrollment"]).resolve()
        assert enrollment in recordings.values() and enrollment != recordings[row["target_id"]]
        assert abs(_ratio_of_parts(manifest, row, "target", "mixture") - row["sir_db"]) < 0.5


def test_rerun_resumes_without_rewriting(task_dir, mini):
    manifest = task_dir / "enhancement" / "train.jsonl"
    before = manifest.read_text()
    files = {p: p.stat().st_mtime_ns for p in (task_dir / "enhancement" / "audio").iterdir()}
    tasks.build_tasks(mini[0], task_dir, seed=0, sizes=SIZES, log=lambda _: None)
    assert manifest.read_text() == before
    assert all(p.stat().st_mtime_ns == t for p, t in files.items())


@pytest.mark.parametrize("ratio", [-5.0, 0.0, 7.5, 20.0])
def test_scale_to_ratio(ratio):
    rng = np.random.default_rng(0)
    speech, noise = rng.standard_normal(8000), 3 * rng.standard_normal(8000)
    assert abs(tasks.ratio_db(speech, tasks.scale_to_ratio(speech, noise, ratio)) - ratio) < 1e-9


@pytest.mark.parametrize("name, exponent", [("white", 0.0), ("pink", 1.0), ("brown", 2.0)])
def test_colored_noise_slope(name, exponent):
    import random

    noise = tasks.colored_noise(2**16, exponent, random.Random(0))
    psd = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(len(noise))
    band = (freqs > 0.001) & (freqs < 0.4)
    slope = np.polyfit(np.log(freqs[band]), np.log(psd[band]), 1)[0]
    assert abs(slope + exponent) < 0.15


def test_missing_corpus_and_bad_sizes_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="speech-studio corpus build"):
        tasks.build_tasks(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(ValueError, match="must not be negative"):
        tasks.build_tasks(tmp_path / "nothing", tmp_path / "out", sizes=tasks.TaskSizes(train=-1))


def test_audio_manifest_lists_every_task_file_once(task_dir):
    manifest = tasks.audio_manifest(task_dir)
    rows = mf.read_jsonl(manifest)
    files = {mf.resolve_audio(m, row[field]).resolve()
             for m in task_dir.glob("*/*.jsonl") for row in mf.read_jsonl(m)
             for field in tasks.AUDIO_FIELDS
             if row.get(field)}
    assert len({r["id"] for r in rows}) == len(rows) == len(files)
    assert {mf.resolve_audio(manifest, r["path"]).resolve() for r in rows} == files
    assert all(r["duration"] > 0 and r["split"] in ("train", "valid", "test", "real") for r in rows)
    stamp = manifest.stat().st_mtime_ns
    assert tasks.audio_manifest(task_dir) == manifest and manifest.stat().st_mtime_ns == stamp  # not rebuilt


def test_audio_manifest_names_a_missing_task_file(task_dir, tmp_path):
    import shutil

    copy = tmp_path / "tasks"
    shutil.copytree(task_dir / "enhancement", copy / "enhancement")
    row = mf.read_jsonl(copy / "enhancement" / "valid.jsonl")[0]
    (copy / "enhancement" / row["noisy"]).unlink()
    with pytest.raises(FileNotFoundError, match=f"{row['id']}'s noisy .* is missing"):
        tasks.audio_manifest(copy)


def test_semantic_tokens_cached_for_every_task_file(task_dir, tmp_path):
    import torch

    from models import registry
    from models.data.dataset import SpeechDataset
    from models.semantic_tokenizer import SemanticTokenizer, SemanticTokenizerConfig
    from models.training.semantic import cache_tokens

    torch.manual_seed(0)
    tokenizer = SemanticTokenizer(SemanticTokenizerConfig(clusters=8))
    tokenizer.centroids.copy_(torch.randn(8, 384))
    card = {"data": "random centroids", "steps": 0, "wall_time_s": 0.0, "device": "cpu", "metrics": {}}
    folder = registry.save_checkpoint(tokenizer, tokenizer.config.to_dict(), card, tmp_path / "semantic")
    count = cache_tokens(task_dir, str(folder))
    rows = SpeechDataset(task_dir / "audio.jsonl", ("train", "valid", "test"), max_seconds=None).rows
    assert count == len(rows)
    for row in rows:
        cached = task_dir / "cache" / "semantic_tokens_semantic" / f"{row['id']}.npy"
        tokens = np.load(cached, allow_pickle=False)
        assert tokens.shape[0] == 1 and abs(tokens.shape[1] - 25 * row["duration"]) <= 1 and tokens.max() < 8
