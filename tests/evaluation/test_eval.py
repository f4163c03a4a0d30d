import csv
import json
import threading
import time
import zlib
from collections import Counter

import numpy as np
import pytest

from evaluation import report as report_module
from evaluation.metrics import MetricError, MetricUnavailable
from evaluation.metrics.base import METRICS, metric
from evaluation.results import latest_rows, read_results
from evaluation.runner import RunConfig, parse_shard, run_eval
from evaluation.systems import parse_system, read_items
from models import audio
from studio.cli import main

CHEAP = ["stoi", "sisdr"]


@pytest.fixture
def seen(mini):
    return mini[0] / "eval" / "tts_seen.lst"


@pytest.fixture
def fake_metric():
    """A registered metric whose scorer can be told to crash or to refuse items."""
    state = {"calls": 0, "crash_at": None, "workers": 1, "threads": set()}

    class Scorer:
        info = {"model": "fake"}
        workers = state["workers"]

        def __call__(self, sample):
            state["calls"] += 1
            state["threads"].add(threading.get_ident())
            if self.workers > 1:  # later units finish first: the order written must not follow completion
                time.sleep(0.02 * (zlib.crc32(sample.key.encode()) % 3))
            if state["calls"] == state["crash_at"]:
                raise KeyboardInterrupt  # Ctrl-C in the middle of a run
            if sample.key.endswith("602"):
                raise MetricError("refused on purpose")
            return {"duration": len(sample.audio()) / 16000}

        def close(self):
            pass

    register = metric("fake", ("duration",), needs=(), higher_is_better=False, description="test")
    register(lambda device, options: type("Configured", (Scorer,), {"workers": state["workers"]})())
    yield state
    METRICS.pop("fake")


def config(manifest, out, systems=("gt",), metrics=CHEAP, **kwargs) -> RunConfig:
    return RunConfig(manifest=str(manifest), systems=[parse_system(s) for s in systems], metrics=list(metrics),
                     out=str(out), **kwargs)


def units(out) -> Counter:
    return Counter((r["system"], r["key"], r["metric"]) for r in read_results(out))


def test_items_map_every_manifest_kind(mini, seen):
    items = read_items(seen)
    first = items[0]
    assert first.text and first.reference.is_file() and first.enrollment.is_file()
    assert first.speaker == first.reference.parent.name
    corpus = read_items(mini[0] / "manifest.jsonl", split="test")
    assert corpus and all(i.reference.is_file() and i.enrollment is None for i in corpus)
    with pytest.raises(ValueError, match="no items in split 'nope'"):
        read_items(mini[0] / "manifest.jsonl", split="nope")


def test_system_specs(tmp_path):
    assert parse_system("gt").kind == "manifest"
    assert parse_system("resynth=vocoder").kind == "codec"
    assert parse_system(f"mine={tmp_path}").kind == "folder"
    with pytest.raises(ValueError, match="neither a folder, a codec or TTS checkpoint, nor one of"):
        parse_system("sled=/no/such/folder")
    with pytest.raises(ValueError, match="vocoder takes no options"):
        parse_system("resynth=vocoder:cfg=2")
    with pytest.raises(ValueError, match="only TTS models and token codecs take options"):
        parse_system("truth=gt:cfg=2")


def test_parse_shard(monkeypatch):
    assert parse_shard("1/4") == (1, 4)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert parse_shard(None) == (2, 3)
    for bad in ("4/4", "x", "1-2"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)


def test_run_scores_generates_and_reports(tmp_path, seen):
    out = tmp_path / "run"
    summary = run_eval(config(seen, out, systems=("gt", "vocoder"), metrics=["pesq", "stoi", "sisdr"], limit=3))
    rows = latest_rows(read_results(out))
    assert len(rows) == 3 * 2 * 3 + 3  # items x systems x metrics, plus the vocoder's RTF rows
    assert all(r["values"] is not None for r in rows)
    assert sorted(p.name for p in (out / "audio" / "vocoder").glob("*.wav")) == sorted(
        f"{i.key}.wav" for i in read_items(seen)[:3])
    gt_pesq = [r["values"]["pesq_wb"] for r in rows if r["system"] == "gt" and r["metric"] == "pesq"]
    assert min(gt_pesq) > 4.6  # ground truth against itself

    assert [p.split("/")[-1] for p in summary["report"]] == ["report.csv", "report.json", "report.html", "report.md"]
    table = list(csv.DictReader(open(out / "report.csv")))
    vocoder_stoi = next(r for r in table
                        if r["system"] == "vocoder" and r["speaker"] == "all" and r["metric"] == "stoi")
    assert 0.8 < float(vocoder_stoi["mean"]) <= 1 and int(vocoder_stoi["n"]) == 3
    assert float(vocoder_stoi["ci_low"]) <= float(vocoder_stoi["mean"]) <= float(vocoder_stoi["ci_high"])
    assert any(r["metric"] == "rtf" and r["system"] == "vocoder" for r in table)
    generation = sum(r["values"]["generation_seconds"] for r in rows if r["metric"] == "rtf")
    assert report_module.read_meta(out)[0]["timing"]["generate vocoder"]["seconds"] >= 0.9 * generation - 0.01
    document = json.loads((out / "report.json").read_text())
    assert document["meta"][0]["git_commit"] and document["meta"][0]["hardware"]["cpu_threads"] >= 1
    page = (out / "report.html").read_text()
    assert "plotly" in page and "pesq_wb" in page and "<script src=" not in page  # self-contained


def test_codec_checkpoint_folder_is_a_codec_system(tmp_path, seen, monkeypatch, capsys):
    from models import registry
    from models.flow_vae import FlowVAE, FlowVAEConfig

    vae = FlowVAEConfig(latent_dim=4, channels=8, dilations=(1,), flow_layers=1, flow_hidden=8, flow_kernel=3)
    folder = registry.save_checkpoint(FlowVAE(vae), vae.to_dict(), {"data": "none", "steps": 0, "wall_time_s": 0.0,
                                                                          "device": "cpu", "metrics": {}},
                                      tmp_path / "vae")
    system = parse_system(f"vae={folder}")
    assert (system.kind, system.generated) == ("codec", True)
    run_eval(config(seen, tmp_path / "run", systems=(f"vae={folder}",), metrics=["stoi", "latent"], limit=1,
                    options={"latent_codec": str(folder)}))
    rows = {r["metric"]: r for r in read_results(tmp_path / "run")}
    assert rows["rtf"]["values"]["rtf"] > 0 and rows["stoi"]["values"] is not None
    assert list((tmp_path / "run" / "audio" / "vae").glob("*.wav"))
    # latents of a codec given by path land in one folder per codec, which the report reads
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert list(report["latents"]) == [str(folder).strip("/").replace("/", "_")]

    # publishing puts the run's means on the card, next to the training metrics
    monkeypatch.setattr(registry, "CHECKPOINT_DIR", tmp_path / "assets")
    assert main(["publish", str(folder), "tiny_vae", "--eval", f"seen={tmp_path / 'run'}", "--system", "vae"]) == 0
    card = registry.read_card(tmp_path / "assets" / "tiny_vae" / registry.CARD)
    assert card["metrics"]["seen/stoi"] == pytest.approx(rows["stoi"]["values"]["stoi"], abs=1e-4)
    assert card["evaluation"]["seen"]  # the command line that made the numbers
    assert registry.list_checkpoints("flow_vae") == ["tiny_vae"]
    assert main(["publish", str(folder), "other", "--eval", f"seen={tmp_path / 'run'}", "--system", "nope"]) == 2
    assert "no results for system 'nope' (it has: vae)" in capsys.readouterr().err
    assert main(["publish", str(folder), "other", "--eval", str(tmp_path / "run")]) == 2
    assert "--eval takes NAME=FOLDER_OR_FILE" in capsys.readouterr().err


def test_an_acoustic_decoder_is_a_resynthesis_system(tmp_path, seen, acoustic_decoder_run):
    """An S2A checkpoint speaks each item's reference again from its semantic tokens, in the enrollment clip's
    voice, at the reference's length; its own controls are options, checked against their ranges."""
    system = parse_system(f"s2a={acoustic_decoder_run}:steps=2:seed=3")
    assert (system.kind, system.generated, dict(system.options)) == ("resynthesis", True, {"steps": 2, "seed": 3})
    with pytest.raises(ValueError, match="steps"):
        parse_system(f"s2a={acoustic_decoder_run}:steps=1000")
    run_eval(config(seen, tmp_path / "run", systems=(f"s2a={acoustic_decoder_run}:steps=2",), metrics=["stoi"],
                    limit=1))
    item = read_items(seen)[0]
    [wav] = (tmp_path / "run" / "audio" / "s2a").glob("*.wav")
    assert len(audio.load_audio(wav, audio.SAMPLE_RATE)) == len(audio.load_audio(item.reference, audio.SAMPLE_RATE))


def test_a_token_codec_system_decodes_its_first_layers_alone(arctic_wav):
    """`layers=K`: a token codec reconstructs from its lowest K layers (what an acoustic decoder generating K
    layers is heard through at best), at K / all of its bitrate; out of range is one clear line."""
    from models import pipelines

    system = parse_system("alm1=alm_tokenizer:layers=1")
    assert (system.kind, dict(system.options)) == ("codec", {"layers": 1})
    count = pipelines.codec_layers("alm_tokenizer")
    with pytest.raises(ValueError, match=f"layers must be 1..{count}"):
        parse_system(f"alm=alm_tokenizer:layers={count + 1}")
    with pytest.raises(ValueError, match="only a token codec takes layers"):
        pipelines.reconstruct(arctic_wav, audio.SAMPLE_RATE, "vocoder", layers=1)
    clip = arctic_wav[: audio.SAMPLE_RATE]
    full, full_info = pipelines.reconstruct(clip, audio.SAMPLE_RATE, "alm_tokenizer")
    low, low_info = pipelines.reconstruct(clip, audio.SAMPLE_RATE, "alm_tokenizer", layers=1)
    assert len(low) == len(full) == len(clip) and not np.allclose(low, full)
    assert low_info["tokens"][0] == 1 and low_info["bitrate"] == pytest.approx(full_info["bitrate"] / count, abs=0.1)


def test_existing_run_needs_resume(tmp_path, seen):
    out = tmp_path / "run"
    run_eval(config(seen, out, limit=1, report=False))
    with pytest.raises(ValueError, match="--resume"):
        run_eval(config(seen, out, limit=1))


def test_nan_with_reason_and_missing_audio(tmp_path, seen, fake_metric):
    folder = tmp_path / "system"
    items = read_items(seen)[:4]
    for item in items[:3]:  # the fourth has no file
        audio.save_audio(folder / f"{item.key}.wav", audio.load_audio(item.reference))
    out = tmp_path / "run"
    run_eval(config(seen, out, systems=(f"mine={folder}",), metrics=["fake"], limit=4))
    rows = {r["key"]: r for r in read_results(out)}
    assert rows[items[1].key]["values"] is None and rows[items[1].key]["reason"] == "refused on purpose"
    assert rows[items[3].key]["values"] is None and "no audio file" in rows[items[3].key]["reason"]
    assert rows[items[0].key]["values"]["duration"] > 0.5
    table = list(csv.DictReader(open(out / "report.csv")))
    overall = next(r for r in table if r["speaker"] == "all" and r["metric"] == "duration")
    assert (overall["n"], overall["n_nan"]) == ("2", "2")


def test_resume_after_a_crash_has_no_duplicates(tmp_path, seen, fake_metric):
    out = tmp_path / "run"
    fake_metric["crash_at"] = 5
    with pytest.raises(KeyboardInterrupt):
        run_eval(config(seen, out, systems=("gt", "input=gt"), metrics=["fake"], limit=6))
    assert sum(units(out).values()) == 4  # units before the crash were flushed
    with open(next((out / "results").glob("shard-*.jsonl")), "a") as f:
        f.write('{"system": "gt", "key": "torn')  # a line cut off mid-write
    fake_metric["crash_at"] = None
    run_eval(config(seen, out, systems=("gt", "input=gt"), metrics=["fake"], limit=6, resume=True))
    counts = units(out)
    assert len(counts) == 12 and set(counts.values()) == {1}


def test_a_scorer_with_workers_scores_units_side_by_side_and_writes_them_in_order(tmp_path, seen, fake_metric):
    runs = {}
    for workers in (1, 3):
        fake_metric.update(workers=workers, threads=set())
        out = tmp_path / f"workers{workers}"
        run_eval(config(seen, out, systems=("gt", "input=gt"), metrics=["fake"], limit=7, report=False))
        runs[workers] = [(r["system"], r["key"], r["values"], r.get("reason")) for r in read_results(out)]
        assert (len(fake_metric["threads"]) > 1) == (workers > 1)
    assert runs[3] == runs[1] and len(runs[1]) == 14  # the same rows, in the same order
    refused = [r for r in runs[3] if r[3] == "refused on purpose"]  # a scorer's refusal stays with its unit
    assert refused and all(key.endswith("602") and values is None for _, key, values, _ in refused)


def test_shards_merge_to_the_single_run(tmp_path, seen):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    run_eval(config(seen, single, limit=5, report=False))
    for index in range(2):  # shards started side by side, neither with --resume
        run_eval(config(seen, sharded, limit=5, shard=(index, 2), report=False))
    with pytest.raises(ValueError, match="shard 1/2: pass --resume"):
        run_eval(config(seen, sharded, limit=5, shard=(1, 2), report=False))
    assert len(list((sharded / "results").glob("shard-*-of-2.jsonl"))) == 2

    def table(out):
        return sorted(json.dumps([r["system"], r["key"], r["metric"], r["values"]]) for r in read_results(out))

    assert table(single) == table(sharded)
    merged = report_module.aggregate(latest_rows(read_results(sharded)))
    assert merged == report_module.aggregate(latest_rows(read_results(single)))


def test_unavailable_metric_is_skipped_with_its_reason(tmp_path, seen):
    def factory(device, options):
        raise MetricUnavailable("needs a model this machine cannot download")

    metric("unloadable", ("x",), needs=(), higher_is_better=True, description="test")(factory)
    try:
        summary = run_eval(config(seen, tmp_path / "run", metrics=["unloadable", "sisdr"], limit=2))
    finally:
        METRICS.pop("unloadable")
    assert summary["skipped"] == {"unloadable": "needs a model this machine cannot download"}
    assert {r["metric"] for r in read_results(tmp_path / "run")} == {"sisdr"}


def test_wer_corpus_and_per_utterance_differ_as_defined():
    rows = [{"system": "s", "key": k, "speaker": "a", "metric": "wer",
             "values": {"wer": e / n, "cer": 0.0, "substitutions": e, "deletions": 0, "insertions": 0,
                        "reference_words": n}} for k, e, n in (("1", 1, 2), ("2", 0, 8))]
    table = {r["metric"]: r for r in report_module.aggregate(rows) if r["speaker"] == "all"}
    assert table["wer"]["mean"] == pytest.approx(0.25)  # mean of 0.5 and 0
    assert table["wer_corpus"]["mean"] == pytest.approx(0.1)  # 1 error in 10 words
    assert table["substitution_rate"]["mean"] == pytest.approx(0.1)


def test_paired_differences_use_shared_items_and_the_metric_direction():
    def row(system, key, wer):
        return {"system": system, "key": key, "speaker": "a", "metric": "wer",
                "values": {"wer": wer, "substitutions": 1, "deletions": 0, "insertions": 0, "reference_words": 4}}

    rows = [row("x", k, w) for k, w in (("1", 0.1), ("2", 0.3), ("3", 0.2))]
    rows += [row("y", k, w) for k, w in (("1", 0.2), ("2", 0.5), ("4", 0.9))]  # "3" and "4" are not shared
    rows += [row("gt", k, 0.0) for k in "123"]  # a constant: the reference scored against itself
    paired = report_module.paired_differences(rows)
    assert [(e["metric"], e["a"], e["b"], e["n"]) for e in paired] == [("wer", "x", "y", 2)]
    assert paired[0]["mean"] == pytest.approx(-0.15) and paired[0]["ci_high"] < 0
    assert paired[0]["a_better"] == 1.0  # lower WER is better
    assert "| wer | x | y | 2 | -0.150" in report_module.markdown(report_module.aggregate(rows), paired)


def test_cli_eval_with_real_models_and_report(tmp_path, seen, capsys):
    out = tmp_path / "run"
    code = main(["eval", "--manifest", str(seen), "--system", "gt", "--metrics", "wer,sim,latent", "--out", str(out),
                 "--limit", "2"])
    assert code == 0
    rows = read_results(out)
    wer = [r["values"]["wer"] for r in rows if r["metric"] == "wer"]
    sim = [r["values"]["sim"] for r in rows if r["metric"] == "sim"]
    assert len(wer) == 2 and all(0 <= w < 0.5 for w in wer)
    assert all(s > 0.7 for s in sim)  # the prompt is the same voice reading another sentence
    latents = list((out / "latents" / "vocoder" / "gt").glob("*.npz"))
    assert len(latents) == 2 and np.load(latents[0])["mean"].shape[1] == 80
    assert main(["report", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert main(["eval", "--manifest", str(seen), "--system", "gt", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_system_no_item_can_feed_is_refused_and_others_skip_what_they_cannot(tmp_path, seen):
    """A codec on a text-only test set would report 'WER 1' for work it never did: refused up front.
    Where only some items lack what a system needs, those items are left out, not failed."""
    words = tmp_path / "words.jsonl"
    words.write_text("".join(json.dumps({"id": f"w{k}", "text": "only words"}) + "\n" for k in range(2)))
    with pytest.raises(ValueError, match="system 'vocoder' cannot run on this test set: none of its 2 items "
                                         "has reference audio"):
        run_eval(config(words, tmp_path / "run", systems=("vocoder",), metrics=["sisdr"]))
    first = read_items(seen)[0]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"id": "a", "text": "t", "path": str(first.reference)}) + "\n"
                     + json.dumps({"id": "b", "text": "only words"}) + "\n")
    run_eval(config(mixed, tmp_path / "mixed", systems=("vocoder",), metrics=["sisdr"], report=False))
    assert {(r["key"], r["metric"]) for r in read_results(tmp_path / "mixed")} == {("a", "rtf"), ("a", "sisdr")}


def test_a_failing_first_item_does_not_warm_up_the_timed_run(tmp_path, seen, monkeypatch):
    from evaluation.systems import GENERATORS
    from tests.conftest import tone

    calls = []

    def factory(device):
        def generate(item):
            calls.append(item.key)
            if len(calls) == 1:
                raise ValueError("the first call fails")
            return tone(1.0), audio.SAMPLE_RATE

        return generate

    monkeypatch.setitem(GENERATORS, "flaky", factory)
    run_eval(config(seen, tmp_path / "run", systems=("f=flaky",), metrics=[], limit=3, report=False))
    keys = [item.key for item in read_items(seen)[:3]]
    assert calls == [keys[0], keys[1], *keys]  # the warm-up moved on to the second item
    assert all(r["values"] is not None for r in read_results(tmp_path / "run"))


def test_bench_asr_compares_two_decodings_on_a_runs_clips(seen, tmp_path):
    from evaluation.bench import bench_asr

    out = tmp_path / "run"
    run_eval(config(seen, out, systems=("gt", "vocoder"), metrics=["wer"], limit=2, report=False))
    result = bench_asr([out], "faster-whisper:tiny.en", "faster-whisper-30s:tiny.en", per_run=3, log=lambda _: None)
    assert result["clips"] == 3 and result["runs"] == [str(out)]
    assert result["decodings"]["faster-whisper:tiny.en"]["transcripts_changed_on_a_second_pass"] == 0
    paired = result["paired_wer_candidate_minus_baseline"]["all"]
    assert paired["n"] == 3 and paired["ci95"][0] <= paired["difference"] <= paired["ci95"][1]
    assert result["paired_wer_candidate_minus_baseline"]["by_run"][str(out)] == paired
    with pytest.raises(ValueError, match="two decodings"):
        bench_asr([out], "faster-whisper:tiny.en", "faster-whisper:tiny.en", log=lambda _: None)
    with pytest.raises(FileNotFoundError, match="not an eval run folder"):
        bench_asr([tmp_path], "faster-whisper:tiny.en", "faster-whisper-30s:tiny.en", log=lambda _: None)


def test_systems_run_under_several_seeds_are_pooled_per_item():
    def row(system, key, wer):
        values = None if wer is None else {"wer": wer, "substitutions": 1, "deletions": 0, "insertions": 0,
                                           "reference_words": 4, "transcript": "x"}
        return {"system": system, "key": key, "speaker": "a", "metric": "wer", "values": values,
                **({"reason": "silent"} if wer is None else {})}

    rows = [row("a_s0", "1", 0.2), row("a_s1", "1", 0.4), row("a_s0", "2", 0.0), row("a_s1", "2", None)]
    rows += [row("b_s0", "1", 0.5), row("b_s1", "1", 0.7), row("b_s0", "2", 0.5), row("b_s1", "2", 0.5)]
    rows += [row("gt", "1", 0.0), row("gt", "2", 0.1), row("one_s3", "1", 0.9)]  # a single seed stays as it is
    pooled = {(r["system"], r["key"]): r["values"] for r in report_module.pool_seeds(rows)}
    assert set(pooled) == {("a", "1"), ("a", "2"), ("b", "1"), ("b", "2"), ("gt", "1"), ("gt", "2"), ("one_s3", "1")}
    assert pooled[("a", "1")]["wer"] == pytest.approx(0.3)
    assert pooled[("a", "2")]["wer"] == 0.0  # the seed that failed is left out
    assert "transcript" not in pooled[("a", "1")]
    paired = report_module.paired_differences(report_module.pool_seeds(rows))
    assert ("wer", "a", "b", 2) in [(e["metric"], e["a"], e["b"], e["n"]) for e in paired]
    assert report_module.pool_seeds([row("a_s0", "1", 0.2), row("gt", "1", 0.0)]) == []
    failed = report_module.pool_seeds([row("c_s0", "1", None), row("c_s1", "1", None), row("d_s0", "1", 0.1)])
    assert failed[-1]["system"] == "c" and failed[-1]["values"] is None and failed[-1]["reason"] == "silent"
    # a name that is also a system of its own (a baseline `sled` beside sled_s1, sled_s2) is left as it is
    ambiguous = [row("sled", "1", 0.1), row("sled_s1", "1", 0.3), row("sled_s2", "1", 0.5)]
    assert report_module.pool_seeds(ambiguous) == []


def test_a_model_card_finds_a_seeded_system_by_its_pooled_name(tmp_path):
    import json

    def entry(system, mean):
        return {"system": system, "speaker": "all", "metric": "wer", "mean": mean}

    (tmp_path / "report.json").write_text(json.dumps({"aggregates": [entry("a_s0", 0.2), entry("a_s1", 0.4)],
                                                      "pooled_over_seeds": {"aggregates": [entry("a", 0.3)]}}))
    assert report_module.card_metrics(tmp_path, "a", "real") == {"real/wer": 0.3}
    assert report_module.card_metrics(tmp_path, "a_s1", "real") == {"real/wer": 0.4}
    with pytest.raises(ValueError, match="no results for system 'b'"):
        report_module.card_metrics(tmp_path, "b", "real")
