"""`speech-studio` command line (also `python -m studio`)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable

OUTPUT_FORMATS = (".wav", ".flac", ".ogg")


class _Parser(argparse.ArgumentParser):
    """An argument error is one line naming the problem (exit 2), not the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind: type, low: float | None = None, high: float | None = None):
    """An argparse type: `kind` (int or float), finite, within [low, high] (argparse names the option)."""

    def show(x) -> str:
        return f"{x:g}" if kind is float else str(x)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'a whole number' if kind is int else 'a number'}, "
                                             f"not {text!r}") from None
        if (kind is float and not math.isfinite(value)) or (low is not None and value < low) \
                or (high is not None and value > high):
            bounds = f"at least {show(low)}" if high is None else f"between {show(low)} and {show(high)}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {text[:40]}")
        return value

    return parse


def _output(path: str, overwrite: bool, *inputs: str | None) -> Path:
    """Check an output path before any work: a supported format, and no file replaced unless asked."""
    out = Path(path)
    if out.suffix.lower() not in OUTPUT_FORMATS:
        raise ValueError(f"output {path}: unsupported format {out.suffix or '(none)'!r}; use "
                         f"{', '.join(OUTPUT_FORMATS)}")
    if out.is_dir():
        raise ValueError(f"output {path} is a folder")
    if any(i and Path(i).resolve() == out.resolve() for i in inputs):
        raise ValueError(f"output {path} is also the input: choose another file name")
    if out.exists() and not overwrite:
        raise ValueError(f"output {path} exists: pass --overwrite to replace it")
    return out


def _serve(args: argparse.Namespace) -> int:
    from studio.app import build_app, launch
    from studio.config import StudioConfig

    config = StudioConfig()
    if args.data:
        config.data_dir = Path(args.data)
    if args.testset:
        config.testsets = dict(_named(spec, "--testset") for spec in args.testset)
    if args.system:
        config.systems = args.system
    config.model_roots = args.model_folder or []
    if args.voice_library:
        config.voice_library = Path(args.voice_library)
    launch(build_app(config), host=args.host, port=args.port, share=args.share)
    return 0


def _named(spec: str, flag: str) -> tuple[str, str]:
    """`NAME=PATH` -> (NAME, PATH), a clear error for anything else."""
    name, sep, value = spec.partition("=")
    if not sep or not name or not value:
        raise ValueError(f"{flag} takes NAME=FOLDER_OR_FILE, not {spec!r}")
    return name, value


def _vocode(args: argparse.Namespace) -> int:
    from models import audio, pipelines

    _output(args.output, args.overwrite, args.input)
    wav = audio.load_audio(args.input, audio.SAMPLE_RATE, max_seconds=args.max_seconds)
    out, info = pipelines.reconstruct(wav, audio.SAMPLE_RATE, codec="vocoder", max_seconds=args.max_seconds)
    audio.save_audio(args.output, out, audio.SAMPLE_RATE)
    print(f"wrote {args.output}: {len(out) / audio.SAMPLE_RATE:.2f} s, RTF {info['rtf']:.3f} on {info['device']} "
          f"({info['vocoder']})")
    return 0


def _bench_vocoder(args: argparse.Namespace) -> dict:
    from evaluation import bench
    from models.registry import ASSETS

    return bench.bench_vocoder(args.input or ASSETS / "audio" / "arctic_a0007.wav", repeats=args.repeats,
                               precisions=(args.precision,) if args.precision else ("fp32", "bf16"),
                               names=["hifigan", args.vocoder] if args.vocoder else None)


def _bench_startup(args: argparse.Namespace) -> dict:
    from evaluation import bench

    return bench.bench_startup(args.model or "sled", args.input, repeats=args.repeats)


def _bench_tts(args: argparse.Namespace) -> dict:
    from evaluation import bench

    return bench.bench_tts(args.model or "sled", (args.text,) if args.text else bench.BENCH_TEXTS, cfg=args.cfg)


def _bench_codec(args: argparse.Namespace) -> dict:
    from evaluation import bench

    if not args.manifest:
        raise ValueError("bench codec needs --manifest (e.g. data/corpus/eval/tts_heldout.lst)")
    return bench.bench_codec(args.model or "flow_vae", args.manifest, per_speaker=args.per_speaker)


def _bench_tokens(args: argparse.Namespace) -> dict:
    from evaluation import bench
    from models.registry import ASSETS

    if not args.model:
        raise ValueError("bench tokens needs --model (a token codec checkpoint, e.g. alm_tokenizer)")
    return bench.bench_token_codec(args.model, args.input or ASSETS / "audio" / "arctic_a0007.wav",
                                   repeats=args.repeats)


def _bench_voices(args: argparse.Namespace) -> dict:
    from evaluation.voice_seeds import voice_seed_report

    if not args.model:
        raise ValueError("bench voices needs --model (a TTS checkpoint with voice seeds, e.g. kalle)")
    return voice_seed_report(args.model, seeds=args.seeds, corpus=args.corpus, cfg=args.cfg,
                             log=lambda line: print(line, file=sys.stderr))


def _bench_studio(args: argparse.Namespace) -> dict:
    from evaluation import bench
    from studio import bench as studio_bench

    return {**studio_bench.launch_time(), "hardware": bench.hardware(),
            "synthesis": studio_bench.ui_latency(args.model or "sled", args.text or bench.BENCH_TEXT, args.repeats,
                                                 cfg=args.cfg)}


def _bench_arena(args: argparse.Namespace) -> dict:
    from studio import bench as studio_bench

    return studio_bench.arena_load(voters=args.voters, votes=args.votes)


def _bench_defaults(args: argparse.Namespace) -> dict:
    from studio import bench as studio_bench

    return studio_bench.tab_defaults()


def _bench_asr(args: argparse.Namespace) -> dict:
    from evaluation import bench
    from evaluation.metrics.asr import DEFAULT_ASR

    if not args.eval_runs:
        raise ValueError("bench asr needs --eval-run DIR (an eval run folder that scored wer), once or more")
    return bench.bench_asr(args.eval_runs, args.asr or DEFAULT_ASR, args.baseline_asr, per_run=args.per_run,
                           log=lambda line: print(line, file=sys.stderr))


def _bench_upload(args: argparse.Namespace) -> dict:
    from studio import bench as studio_bench

    return studio_bench.upload_limit(args.size_mb)


# `speech-studio bench TARGET`: what each measures (its help line) and the function that does; the
# command's choices and help are made from this table.
BENCH_TARGETS: dict[str, tuple[str, Callable[[argparse.Namespace], dict]]] = {
    "vocoder": ("speed, arithmetic and quality of each vocoder side by side, HiFi-GAN and every vocoder checkpoint "
                "([--input WAV] [--precision]; with the global --vocoder NAME, HiFi-GAN and that one)", _bench_vocoder),
    "tts": ("a TTS checkpoint's RTF, first streamed chunk and FLOPs ([--model M] [--text])", _bench_tts),
    "codec": ("encoder vs decoder headroom of a latent codec (--model CODEC --manifest LST)", _bench_codec),
    "tokens": ("a token codec's encode and decode speed per window (--model CODEC [--input WAV])", _bench_tokens),
    "voices": ("voice seeds: intelligibility, diversity, novelty (--model M [--corpus])", _bench_voices),
    "studio": ("launch time and UI vs pipeline latency ([--model M])", _bench_studio),
    "startup": ("process wall time of one-shot `tts` (one sentence) against `vocode` of a 4 s clip, median of "
                "--repeats fresh processes ([--model M] [--input WAV])", _bench_startup),
    "arena": ("the A/B vote store under concurrent voters", _bench_arena),
    "defaults": ("every tab's main action with its starting values through the served studio", _bench_defaults),
    "upload": ("a large upload against the size limit, with the server's peak memory", _bench_upload),
    "asr": ("two ASR decodings on the clips eval runs scored: speed, repeatability, paired WER (--eval-run DIR ...)",
            _bench_asr),
}


def _bench(args: argparse.Namespace) -> int:
    from evaluation import bench

    print(bench.write_json(BENCH_TARGETS[args.target][1](args), args.out))
    return 0


def _train(args: argparse.Namespace) -> int:
    from evaluation.scorers import training_scorers
    from models.training import Trainer, load_config

    config = load_config(args.config)
    if config["model"]["model"] != args.model:
        raise ValueError(f"{args.config} is a config for {config['model']['model']}, not {args.model}")
    if args.steps is not None:
        config["train"]["steps"] = args.steps
    if (args.split or args.val_batches) and not args.validate_only:
        raise ValueError("--split and --val-batches go with --validate-only")
    if args.val_batches:
        config["train"]["val_batches"] = args.val_batches
    trainer = Trainer(args.model, config, data=args.data, out=args.out, resume=args.resume,
                      device=os.environ.get("STUDIO_DEVICE"), max_steps=args.stop_after,
                      validate_only=args.validate_only, validate_split=args.split or "valid",
                      scorers=training_scorers())
    state = trainer.run()
    if args.validate_only:
        print(f"validated step {state['step']} on {args.split or 'valid'}: {args.out}/val.csv, batch by batch in "
              f"{args.out}/val_batches.csv")
        return 0
    print(f"stopped at step {state['step']} after {state['wall_time_s']:.0f} s; checkpoint: {args.out}/export")
    return 0


API_MARKERS = ("<!-- api:start -->\n", "<!-- api:end -->")


def _api(args: argparse.Namespace) -> int:
    import tempfile

    from models.files import write_text_atomic
    from studio.app import api_reference, build_app
    from studio.config import StudioConfig

    table = api_reference(build_app(StudioConfig(data_dir=Path(tempfile.mkdtemp(prefix="studio-api-")))))
    if not args.write:
        print(table, end="")
        return 0
    text = Path(args.write).read_text()
    start, end = (text.find(marker) for marker in API_MARKERS)
    if start < 0 or end < start:
        raise ValueError(f"{args.write} has no {API_MARKERS[0].strip()} ... {API_MARKERS[1]} block")
    write_text_atomic(args.write, text[: start + len(API_MARKERS[0])] + table + text[end:])
    return 0


def _space(args: argparse.Namespace) -> int:
    import json

    from studio.space import push

    print(json.dumps(push(args.space, private=args.private), indent=1))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from evaluation.report import card_metrics, read_meta
    from models import registry

    metrics, commands = {}, {}
    for spec in args.eval:
        label, folder = _named(spec, "--eval")
        metrics.update(card_metrics(folder, args.system, label))
        commands[label] = [m["command"] for m in read_meta(folder)]  # one per shard
    updates = {"metrics": metrics}
    if commands:
        updates["evaluation"] = commands
    stages = dict(_named(spec, "--stage") for spec in args.stage)
    target = registry.publish(args.checkpoint, args.name, updates, half=args.half, stages=stages)
    print(f"published {target} ({(target / registry.WEIGHTS).stat().st_size / 2**20:.1f} MiB)")
    return 0


def _with_epilog(parser: argparse.ArgumentParser, epilog: Callable[[], str]) -> str:
    parser.epilog = epilog()
    return argparse.ArgumentParser.format_help(parser)


def _metrics_help() -> str:
    """The metric registry, for `eval --help`."""
    from evaluation.metrics import METRICS

    return "metrics:\n" + "\n".join(f"  {name}: {spec.description}" for name, spec in METRICS.items())


def _tts_models_help() -> str:
    """The local TTS checkpoints and each one's own options with their ranges, for `tts --help`."""
    from models import pipelines
    from models.roles import number_text as shown

    lines = ["local TTS checkpoints and their own options:"]
    for model in pipelines.available_tts_models():
        try:
            controls = pipelines.tts_controls(model)
        except Exception as error:  # a broken checkpoint is listed with its problem, not hidden
            lines.append(f"  {model}: {error}")
            continue
        options = "; ".join(f"--{name.replace('_', '-')} {shown(c.minimum)}-{shown(c.maximum)} "
                            f"(default {shown(c.default)})" for name, c in controls.items())
        lines.append(f"  {model}: {options or 'no options of its own'}")
    return "\n".join(lines)


def _model_controls(model: str, extra: list[str], controls: dict | None = None,
                    command: str = "tts") -> dict[str, float]:
    """A model's own settings (its CONTROLS; a TTS model's unless `controls` are given) from the options
    left over, `--voice-seed 7` for voice_seed."""
    from models import pipelines

    controls = pipelines.tts_controls(model) if controls is None else controls
    parser = _Parser(prog=f"speech-studio {command} --model {model}", add_help=False)
    for name, control in controls.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=_number(float), help=control.label)
    values, unknown = parser.parse_known_args(extra)
    if unknown:
        known = ", ".join("--" + n.replace("_", "-") for n in controls) or "none"
        raise ValueError(f"unknown option {unknown[0]} (the settings of {model}: {known})")
    return {name: value for name, value in vars(values).items() if value is not None}


def _tts(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from models import audio, pipelines, registry

    if (args.text is None) == (args.file is None):
        raise ValueError("give the text to say with --text, or a file of lines with --file")
    if args.file is None and (args.out is None or args.out_dir is not None):
        raise ValueError("--text writes one file: give --out (and no --out-dir)")
    if args.file is not None and (args.out_dir is None or args.out is not None):
        raise ValueError("--file writes one file per line: give --out-dir (and no --out)")
    if args.file is None:
        _output(args.out, args.overwrite, args.ref)  # before any model is looked at
    pipelines.check_sampling(args.cfg, args.seed)
    if args.raw_ref and not args.ref and args.file is None:
        raise ValueError("--raw-ref applies to a reference clip: give --ref")
    settings = {**_model_controls(args.model, args.extra), "cfg": args.cfg, "ttt_samples": args.ttt,
                "ttt_lr": args.ttt_lr, "level_reference": not args.raw_ref}
    if args.ttt:  # a fitted voice is judged against the unfitted model before it is used
        from evaluation.scorers import training_scorers

        settings["scorers"] = training_scorers(registry.pick_device(None))
    transcriber = None

    def transcribe(wav):
        nonlocal transcriber
        if transcriber is None:
            from evaluation.metrics.asr import transcriber as load

            transcriber = load(registry.pick_device(None))
        return transcriber(wav)

    if args.file is not None:
        from tqdm import tqdm

        rows = pipelines.read_tts_lines(args.file)
        if args.ref:
            rows = [{"ref": args.ref, "ref_text": args.ref_text, **row} for row in rows]
        summary = pipelines.tts_batch(rows, args.out_dir, model=args.model, seed=args.seed, transcribe=transcribe,
                                      progress=lambda todo: tqdm(todo, desc="tts", unit="line"), **settings)
        print(json.dumps(summary, indent=1))
        return 0
    ref = None
    if args.ref:
        ref = audio.load_audio(args.ref, audio.SAMPLE_RATE, max_seconds=pipelines.MAX_REFERENCE_UPLOAD_SECONDS)
    progress = None
    if args.ttt:
        def progress(step, steps):
            print(f"test-time training: step {step} / {steps}", file=sys.stderr, flush=True)
    result, info = pipelines.tts(args.text, model=args.model, ref_wav=ref, ref_sr=audio.SAMPLE_RATE,
                                 ref_text=args.ref_text, seed=args.seed, stream=args.stream,
                                 transcribe=transcribe, ttt_progress=progress, **settings)
    wav = np.concatenate(list(result)) if args.stream else result  # chunks arrive as they are generated
    audio.save_audio(args.out, wav, audio.SAMPLE_RATE)
    print(json.dumps({"out": str(args.out), **info}, indent=1))
    return 0


def _speech(args: argparse.Namespace) -> int:
    import json

    from models import audio, pipelines

    batch = Path(args.input).is_dir() or args.input.endswith(".jsonl")
    if not batch:
        _output(args.output, args.overwrite, args.input, args.voice)
    elif Path(args.output).suffix.lower() in OUTPUT_FORMATS:
        raise ValueError(f"a folder or manifest of recordings writes one file each: give an output folder, "
                         f"not {args.output}")
    if args.task == "enhance" and args.voice:
        raise ValueError("enhance takes no --voice")
    if args.task != "enhance" and not args.voice and not batch:
        raise ValueError(f"{args.task} needs --voice (the " + ("target voice)" if args.task == "convert" else
                                                              "enrollment clip of the speaker to keep)"))
    model = args.model or next(iter(pipelines.available_speech_models(args.task)), None)
    if model is None:
        raise ValueError(f"no {pipelines.TASK_NAMES[args.task]} backend is installed (train and publish one, "
                         "e.g. Metis)")
    settings = _model_controls(model, args.extra, pipelines.speech_controls(model), f"speech {args.task}")
    if batch:
        from tqdm import tqdm

        rows = pipelines.read_speech_inputs(args.input, args.voice)
        summary = pipelines.speech_batch(args.task, rows, args.output, model=model, seed=args.seed,
                                         progress=lambda todo: tqdm(todo, desc=args.task, unit="file"), **settings)
        print(json.dumps(summary, indent=1))
        return 0
    wav = audio.load_audio(args.input, audio.SAMPLE_RATE)
    voice = (audio.load_audio(args.voice, audio.SAMPLE_RATE), audio.SAMPLE_RATE) if args.voice else ()
    out, info = getattr(pipelines, args.task)(wav, audio.SAMPLE_RATE, *voice, model=model, seed=args.seed, **settings)
    audio.save_audio(args.output, out, audio.SAMPLE_RATE)
    print(json.dumps({"out": str(args.output), **info}, indent=1))
    return 0


def _codec_semantic(args: argparse.Namespace) -> int:
    import json

    from models import audio, pipelines

    _output(args.output, args.overwrite, args.input, args.prompt)
    settings = _model_controls(args.decoder, args.extra, pipelines.acoustic_decoder_controls(args.decoder),
                               "codec semantic")
    wav = audio.load_audio(args.input, audio.SAMPLE_RATE)
    prompt = audio.load_audio(args.prompt, audio.SAMPLE_RATE) if args.prompt else None
    out, info = pipelines.semantic_resynthesis(wav, audio.SAMPLE_RATE, args.decoder, prompt, audio.SAMPLE_RATE,
                                               seed=args.seed, **settings)
    audio.save_audio(args.output, out, audio.SAMPLE_RATE)
    print(json.dumps({"out": str(args.output), **info}, indent=1))
    return 0


def _codec_reconstruct(args: argparse.Namespace) -> int:
    from models import audio, pipelines

    _output(args.output, args.overwrite, args.input)
    wav = audio.load_audio(args.input, audio.SAMPLE_RATE, max_seconds=args.max_seconds)
    out, info = pipelines.reconstruct(wav, audio.SAMPLE_RATE, codec=args.codec, max_seconds=args.max_seconds,
                                      window=args.window)
    audio.save_audio(args.output, out, audio.SAMPLE_RATE)
    rate = f", {info['bitrate']:g} bit/s" if "bitrate" in info else ""
    print(f"wrote {args.output} through {args.codec}{rate}: {len(out) / audio.SAMPLE_RATE:.2f} s, "
          f"RTF {info['rtf']:.3f} on {info['device']}")
    return 0


def _codes_output(path: str, overwrite: bool, source: str) -> Path:
    out = Path(path)
    if out.suffix.lower() != ".npz":
        raise ValueError(f"output {path}: codes are written to an .npz file")
    if out.resolve() == Path(source).resolve():
        raise ValueError(f"output {path} is also the input: choose another file name")
    if out.exists() and not overwrite:
        raise ValueError(f"output {path} exists: pass --overwrite to replace it")
    return out


def _codec_encode(args: argparse.Namespace) -> int:
    import json

    from models import audio, pipelines

    out = _codes_output(args.output, args.overwrite, args.input)
    wav = audio.load_audio(args.input, audio.SAMPLE_RATE, max_seconds=args.max_seconds)
    header = pipelines.encode_file(wav, audio.SAMPLE_RATE, args.codec, out, window=args.window,
                                   max_seconds=args.max_seconds)
    print(json.dumps({"out": str(out), **header}, indent=1))
    return 0


def _codec_decode(args: argparse.Namespace) -> int:
    from models import audio, pipelines

    _output(args.output, args.overwrite, args.input)
    if not Path(args.input).is_file():
        raise FileNotFoundError(f"codes file not found: {args.input}")
    wav, header = pipelines.decode_file(args.input, codec=args.codec)
    audio.save_audio(args.output, wav, audio.SAMPLE_RATE)
    print(f"wrote {args.output} from {header['kind']} of {args.codec or header['codec']}: "
          f"{len(wav) / audio.SAMPLE_RATE:.2f} s")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from evaluation.results import RTF
    from evaluation.runner import RunConfig, parse_shard, run_eval
    from evaluation.systems import parse_system

    specs = [spec for item in args.system for spec in item.split(",") if spec]
    systems = [parse_system(spec) for spec in specs]
    if len({s.name for s in systems}) != len(systems):
        raise ValueError("two systems share a name")
    metrics = [m for m in args.metrics.split(",") if m and m != RTF]  # RTF is always measured when generating
    options = {k: v for k, v in (("asr", args.asr), ("latent_codec", args.latent_codec)) if v}
    config = RunConfig(manifest=args.manifest, systems=systems, metrics=metrics, out=args.out, split=args.split,
                       resume=args.resume, shard=parse_shard(args.shard), limit=args.limit,
                       per_speaker=args.per_speaker, options=options, seed=args.seed, report=not args.no_report)
    summary = run_eval(config, argv=["speech-studio", *sys.argv[1:]])
    for name, reason in summary["skipped"].items():
        print(f"skipped {name}: {reason}")
    for path in summary.get("report", []):
        print(f"wrote {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from evaluation.report import write_report

    for path in write_report(args.folder, seed=args.seed):
        print(f"wrote {path}")
    return 0


def _corpus_build(args: argparse.Namespace) -> int:
    from models.data import corpus

    voices = [v for item in args.voices or [] for v in item.split(",") if v]
    engines = [e for item in args.engines or [] for e in item.split(",") if e]
    report = corpus.build(args.out, profile=args.profile, train_hours=args.hours, voices=voices or None,
                          workers=args.workers, seed=args.seed, engines=engines or None,
                          natural_hours=args.kokoro_hours)
    return 0 if report["finished"] else 1


def _corpus_pack(args: argparse.Namespace) -> int:
    from models.data.pack import pack

    features = {}
    for spec in args.feature:
        name, _, channels = spec.partition(":")
        if channels and not channels.isdigit():
            raise ValueError(f"--feature {spec!r}: CHANNELS must be a whole number")
        features[name] = int(channels) if channels else None
    summary = pack(args.corpus, features, args.out, tuple(args.splits))
    print(f"packed {summary['rows']} utterances' {', '.join(summary['features'])} into {args.out} "
          f"({summary['bytes'] / 2**20:.1f} MiB)")
    return 0


def _corpus_unpack(args: argparse.Namespace) -> int:
    from models.data.pack import unpack

    summary = unpack(args.packed, args.out)
    print(f"unpacked {summary['rows']} utterances' {', '.join(summary['features'])} into {args.out}")
    return 0


def _corpus_export(args: argparse.Namespace) -> int:
    from models.data import corpus

    count = corpus.export_testset(args.corpus, args.list, args.out, per_speaker=args.per_speaker)
    print(f"wrote {args.out}: {count} items")
    return 0


def _corpus_tasks(args: argparse.Namespace) -> int:
    from models.data import tasks

    sizes = tasks.TaskSizes(train=args.train, valid=args.valid, test=args.test)
    counts = tasks.build_tasks(args.corpus, args.out, seed=args.seed, sizes=sizes)
    for name, count in counts.items():
        print(f"{name}: {count} items")
    return 0


def _corpus_speakers(args: argparse.Namespace) -> int:
    from evaluation.speakers import distinct_speakers

    out = args.out or str(Path(args.corpus) / "speakers.json")
    report = distinct_speakers(args.corpus, per_speaker=args.per_speaker, out=out, encoder=args.encoder)
    heldout = report["heldout_utterance_eer"]
    print(f"{report['speakers']} speakers; {report['distinct']} that {report['speaker_model']} tells apart pairwise "
          f"({report['distinct_seen']} seen, {report['distinct_heldout']} held out); utterance EER "
          f"{report['utterance_eer']:.3f} (held-out speakers only: "
          f"{'n/a' if heldout is None else format(heldout, '.3f')}); "
          f"{len(report['pairs_not_told_apart'])} pairs not told apart")
    for voice_family, count in report["by_family"].items():
        print(f"  {voice_family} voices: {count['distinct']} of {count['speakers']} told apart within the family "
              f"({count['distinct_seen']} seen, {count['distinct_heldout']} held out)")
    print(f"wrote {out}")
    return 0


def _semantic_fit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models.training.semantic import fit_tokenizer

    out = fit_tokenizer(args.corpus, args.out, rate=args.rate, clusters=args.clusters, encoder=args.encoder,
                        max_utterances=args.max_utterances, seed=args.seed,
                        progress=lambda todo: tqdm(todo, desc="semantic features", unit="batch"))
    print(f"wrote {out}")
    return 0


def _semantic_cache(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from models.training.semantic import cache_features, cache_tokens

    def progress(todo):
        return tqdm(todo, desc="semantic", unit="step")

    if args.tokenizer:
        count = cache_tokens(args.corpus, args.tokenizer, progress=progress)
        print(f"{count} utterances have {args.tokenizer} tokens cached")
    else:
        count = cache_features(args.corpus, args.encoder, progress=progress)
        print(f"encoded {count} utterances")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from evaluation import bench
    from evaluation.probes import run_probe

    codecs = dict(_named(spec, "--codec") if "=" in spec else (spec, spec) for spec in args.codec)
    result = run_probe(args.kind, codecs, args.corpus, window=args.window, train_items=args.train_items,
                       test_items=args.test_items, steps=args.steps, seed=args.seed,
                       log=lambda line: print(line, file=sys.stderr))
    print(bench.write_json(result, args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from models.pipelines import CFG_RANGE, MAX_SEED, SETTINGS, TTT_LR, TTT_LR_RANGE
    from models.roles import SPEECH_TASKS

    parser = _Parser(prog="speech-studio", description=__doc__)
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--vocoder", help="the mel vocoder every command decodes with: hifigan (default) or a "
                        "vocoder checkpoint name or folder (vocos)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the Gradio studio")
    serve.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    serve.add_argument("--port", type=_number(int, 1, 65535),
                       default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    serve.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    serve.add_argument("--data", help="folder for votes, A/B clips and evaluation runs "
                       "(default: $STUDIO_DATA or runs/studio)")
    serve.add_argument("--testset", action="append", metavar="NAME=MANIFEST",
                       help="test sets offered by the studio (repeatable; default: the built-in ones)")
    serve.add_argument("--system", action="append", metavar="SPEC",
                       help="systems of the A/B test and the Evaluate menu, as `eval --system` (repeatable; "
                       "default: gt, vocoder, every checkpoint)")
    serve.add_argument("--model-folder", action="append", metavar="DIR",
                       help="a folder (beyond assets/) whose checkpoint folders visitors may type as a model "
                       "(repeatable)")
    serve.add_argument("--voice-library", metavar="JSON",
                       help="a shared, read-only library of named voice seeds ({\"name\": seed}) for every visitor, "
                       "beside each visitor's own saved voices (default: $STUDIO_VOICE_LIBRARY, or none)")
    serve.set_defaults(run=_serve)

    vocode = commands.add_parser("vocode", help="analysis-resynthesis through the shared vocoder (--vocoder)")
    vocode.add_argument("input", help="audio file (wav, flac, ogg, mp3)")
    vocode.add_argument("output", help="output .wav, .flac or .ogg (22.05 kHz)")
    vocode.add_argument("--max-seconds", type=_number(float, 0.1, 3600), default=600.0,
                        help="refuse longer inputs")
    vocode.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    vocode.set_defaults(run=_vocode)

    corpus = commands.add_parser("corpus", help="build the synthetic speech corpus and task sets")
    corpus_commands = corpus.add_subparsers(dest="corpus_command", required=True, metavar="ACTION")
    build = corpus_commands.add_parser("build", help="synthesize a multi-speaker corpus (resumable)")
    build.add_argument("--out", required=True, help="corpus folder (created; an existing one is resumed)")
    build.add_argument("--profile", default="default",
                       help="default: corpus v3 (engine voices and Kokoro); v2: the engine voices only; mini: tests")
    build.add_argument("--hours", type=_number(float, 0.01, 1000),
                       help="training hours over the engine voices' seen speakers (overrides the profile)")
    build.add_argument("--kokoro-hours", type=_number(float, 0.01, 1000),
                       help="training hours over the Kokoro voices' seen speakers (overrides the profile)")
    build.add_argument("--engines", nargs="+", help="build only these engines' voices (e.g. kokoro); a later "
                                                    "build without it finishes the rest")
    build.add_argument("--voices", nargs="+", help="voice names, engines or speakers (default: all installed)")
    build.add_argument("--workers", type=_number(int, 1, 256), help="processes (default: one per core)")
    build.add_argument("--seed", type=_number(int, 0, MAX_SEED), default=0)
    build.set_defaults(run=_corpus_build)
    task_sets = corpus_commands.add_parser("tasks", help="enhancement, extraction and conversion sets from a corpus")
    task_sets.add_argument("--corpus", required=True, help="folder with the corpus manifest.jsonl")
    task_sets.add_argument("--out", required=True, help="output folder (an existing one is resumed)")
    task_sets.add_argument("--seed", type=_number(int, 0, MAX_SEED), default=0)
    for split, default in (("train", 4000), ("valid", 200), ("test", 300)):
        task_sets.add_argument(f"--{split}", type=_number(int, 0), default=default,
                               help=f"items per task in {split}")
    task_sets.set_defaults(run=_corpus_tasks)
    export = corpus_commands.add_parser("export", help="a shippable copy of a corpus zero-shot list (FLAC + JSONL)")
    export.add_argument("--corpus", required=True, help="folder with the corpus manifest.jsonl")
    export.add_argument("--list", required=True, help="the list under CORPUS/eval, without .lst (e.g. tts_kokoro)")
    export.add_argument("--out", required=True, help="JSONL manifest to write; the audio goes in the folder "
                                                     "of the same name beside it")
    export.add_argument("--per-speaker", type=_number(int, 2, 1000), default=3, help="clips per speaker")
    export.set_defaults(run=_corpus_export)
    count = corpus_commands.add_parser("speakers", help="how many speakers a speaker model tells apart (JSON)")
    count.add_argument("--corpus", required=True, help="folder with the corpus manifest.jsonl")
    count.add_argument("--per-speaker", type=_number(int, 2, 1000), default=8, help="test utterances per speaker")
    count.add_argument("--out", help="JSON report (default: CORPUS/speakers.json)")
    count.add_argument("--encoder", help="a speaker-encoder checkpoint instead of the bench's Resemblyzer")
    count.set_defaults(run=_corpus_speakers)

    packing = corpus_commands.add_parser("pack", help="a corpus's cached token features as one compact file (what "
                                                      "a GPU machine without the audio trains from)")
    packing.add_argument("--corpus", required=True, help="folder with the corpus manifest.jsonl and cache/")
    packing.add_argument("--feature", action="append", required=True, metavar="NAME[:CHANNELS]",
                         help="a cache folder of integer features (e.g. semantic_tokens_semantic_tokenizer, "
                              "tokens-<digest>:16 for a codec's first 16 layers); repeat")
    packing.add_argument("--splits", nargs="+", default=["train", "valid"], help="the splits to pack")
    packing.add_argument("--out", required=True, help=".npz file to write")
    packing.set_defaults(run=_corpus_pack)
    unpacking = corpus_commands.add_parser("unpack", help="a packed file back into a corpus folder of caches")
    unpacking.add_argument("packed", help="the .npz written by corpus pack")
    unpacking.add_argument("--out", required=True, help="corpus folder to write (manifest.jsonl, cache/)")
    unpacking.set_defaults(run=_corpus_unpack)

    semantic = commands.add_parser("semantic", help="semantic features and the semantic tokenizer (k-means)")
    semantic_commands = semantic.add_subparsers(dest="semantic_command", required=True, metavar="ACTION")
    fit = semantic_commands.add_parser("fit", help="cache the corpus's features and fit the k-means tokenizer")
    fit.add_argument("--corpus", required=True, help="folder with the corpus manifest.jsonl")
    fit.add_argument("--out", required=True, help="checkpoint folder to write")
    fit.add_argument("--rate", type=_number(float, 1, 50), default=25.0, help="tokens per second")
    fit.add_argument("--clusters", type=_number(int, 2, 16384), default=1024)
    fit.add_argument("--encoder", default="whisper-tiny.en",
                     help="whisper-tiny.en (offline), or a Hugging Face id[@layer]: facebook/w2v-bert-2.0@17")
    fit.add_argument("--max-utterances", type=_number(int, 10, None), default=4000,
                     help="training utterances sampled for k-means")
    fit.add_argument("--seed", type=_number(int, 0, MAX_SEED), default=0)
    fit.set_defaults(run=_semantic_fit)
    cache = semantic_commands.add_parser("cache", help="cache the corpus's semantic features, or with --tokenizer "
                                                       "its tokens (resumable)")
    cache.add_argument("--corpus", required=True, help="folder with the corpus manifest.jsonl, or a task-set folder "
                                                       "(speech-studio corpus tasks): every audio file of its sets")
    cache.add_argument("--encoder", default="whisper-tiny.en", help="the semantic encoder (as for fit)")
    cache.add_argument("--tokenizer", help="a semantic tokenizer checkpoint: cache its tokens")
    cache.set_defaults(run=_semantic_cache)

    train = commands.add_parser("train", help="train a model (resumable; DDP under torchrun)")
    train.add_argument("model", help="what to train, e.g. flow_vae")
    train.add_argument("--config", required=True, help="YAML with model: and train: sections (models/configs/)")
    train.add_argument("--data", required=True, help="corpus folder (or its manifest.jsonl)")
    train.add_argument("--out", required=True, help="run folder: logs, checkpoints, samples, export/")
    train.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    train.add_argument("--steps", type=_number(int, 1, None), help="override train.steps (the schedule's length)")
    train.add_argument("--stop-after", type=_number(int, 1, None),
                       help="stop this process at this step (resume later)")
    train.add_argument("--validate-only", action="store_true",
                       help="validate the loaded weights (train.init_from, or the latest checkpoint with --resume) "
                            "into the run's val.csv and samples/, without training")
    train.add_argument("--split", choices=["valid", "heldout", "test"],
                       help="with --validate-only: the corpus split to validate on (default valid; heldout: the "
                            "voices no run trains on)")
    train.add_argument("--val-batches", type=_number(int, 1, None),
                       help="with --validate-only: override train.val_batches")
    train.set_defaults(run=_train)

    api = commands.add_parser("api", help="the endpoints an API client may call, as the README lists them")
    api.add_argument("--write", metavar="README", help="replace the list between the file's api markers")
    api.set_defaults(run=_api)

    space = commands.add_parser("space", help="push the repository to a Hugging Face Space (online; needs a token)")
    space.add_argument("space", metavar="OWNER/NAME", help="the Space (created as a Gradio Space if missing)")
    space.add_argument("--private", action="store_true")
    space.set_defaults(run=_space)

    publish = commands.add_parser("publish", help="copy a trained checkpoint into assets/checkpoints with its "
                                                  "evaluation results on the card")
    publish.add_argument("checkpoint", help="checkpoint folder, e.g. runs/flow_vae/export")
    publish.add_argument("name", help="name under assets/checkpoints/")
    publish.add_argument("--eval", action="append", default=[], metavar="LABEL=RUN_FOLDER",
                         help="an `eval` run folder whose overall means go on the card as LABEL/metric; repeatable")
    publish.add_argument("--system", default="model", help="the checkpoint's system name in those runs")
    publish.add_argument("--half", action="store_true",
                         help="store floating-point weights as float16 (half the size; loaded back as float32)")
    publish.add_argument("--stage", action="append", default=[], metavar="SETTING=CHECKPOINT",
                         help="a checkpoint the model composes, set to another of the same role (e.g. a latent RVQ's "
                              "decoder=flow_vae_rvq); repeatable")
    publish.set_defaults(run=_publish)

    tts = commands.add_parser("tts", help="text to speech with any TTS checkpoint; a model's own settings are options "
                                          "too, e.g. --temperature, --voice-seed",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    tts.format_help = lambda: _with_epilog(tts, _tts_models_help)  # models are read only when help is asked
    tts.add_argument("--model", default="sled", help="a TTS checkpoint name or folder (see the list below)")
    tts.add_argument("--text", help="what to say (long text is split into sentences)")
    tts.add_argument("--file", help="batch: a text file (one utterance per line) or a JSONL of rows with text "
                                    "(and optional id, ref, ref_text, seed); resumable")
    tts.add_argument("--out-dir", help="batch: folder for <id>.wav and synthesis.jsonl (settings and seeds)")
    tts.add_argument("--ref", help="a reference clip whose voice to continue")
    tts.add_argument("--ref-text", help="the reference's transcript (default: transcribed by the bench's ASR)")
    tts.add_argument("--raw-ref", action="store_true",
                     help="give the model the reference as it is (default: trimmed and levelled like the corpus)")
    tts.add_argument("--cfg", type=_number(float, *CFG_RANGE), default=2.0,
                     help=f"classifier-free guidance scale, {CFG_RANGE[0]:g}-{CFG_RANGE[1]:g} (1 = none)")
    tts.add_argument("--seed", type=_number(int, 0, MAX_SEED), help="random seed (default: drawn and printed)")
    tts.add_argument("--stream", action="store_true", help="generate and decode chunk by chunk")
    ttt = SETTINGS["ttt"]
    tts.add_argument("--ttt", type=_number(int, int(ttt.minimum), int(ttt.maximum)), nargs="?", const=int(ttt.default),
                     default=0, metavar="N",
                     help="fit the model to the reference's voice first (test-time training on N posterior "
                          "samples, default 200; models that offer it)")
    tts.add_argument("--ttt-lr", type=_number(float, *TTT_LR_RANGE), default=TTT_LR, metavar="LR",
                     help=f"the test-time training's learning rate (default {TTT_LR:g})")
    tts.add_argument("--out", help="output .wav, .flac or .ogg (22.05 kHz)")
    tts.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    tts.set_defaults(run=_tts, takes_model_options=True)

    speech = commands.add_parser("speech", help="speech to speech: convert a voice, enhance a noisy recording, "
                                                "extract a speaker from a mixture; a model's own settings are "
                                                "options too")
    speech.add_argument("task", choices=SPEECH_TASKS)
    speech.add_argument("input", help="the speech to convert, the noisy recording, or the mixture; or a folder of "
                                      "them, or a JSONL manifest (input, optional voice, id, seed): a batch, resumable")
    speech.add_argument("output", help="output .wav, .flac or .ogg (22.05 kHz); for a batch, a folder (with "
                                       "speech.jsonl: each file's settings)")
    speech.add_argument("--voice", help="convert: the target voice; extract: an enrollment clip of the speaker "
                                        "(in a batch, for every recording whose row names none)")
    speech.add_argument("--model", help="a checkpoint that serves the task (default: the first local one)")
    speech.add_argument("--seed", type=_number(int, 0, MAX_SEED), help="random seed (default: drawn and printed)")
    speech.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    speech.set_defaults(run=_speech, takes_model_options=True)

    codec = commands.add_parser("codec", help="encode and decode audio through a codec")
    codec_commands = codec.add_subparsers(dest="codec_command", required=True, metavar="ACTION")
    reconstruct = codec_commands.add_parser("reconstruct", help="audio -> codec -> audio")
    reconstruct.add_argument("input", help="audio file")
    reconstruct.add_argument("output", help="output .wav, .flac or .ogg (22.05 kHz)")
    reconstruct.add_argument("--codec", default="flow_vae",
                             help="vocoder, codec2_700c, codec2_1200, opus_6k, or a codec checkpoint name or folder")
    window_help = "a token codec's window: patch frames per token, which sets the bitrate (default: the codec's)"
    reconstruct.add_argument("--window", type=_number(int, 1, 64), help=window_help)
    reconstruct.add_argument("--max-seconds", type=_number(float, 0.1, 3600), default=600.0,
                             help="refuse longer inputs")
    reconstruct.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    reconstruct.set_defaults(run=_codec_reconstruct)
    encode = codec_commands.add_parser("encode", help="audio -> codes (.npz: a token codec's integer tokens, or a "
                                                      "latent codec's latents, with the codec, window and bitrate)")
    encode.add_argument("input", help="audio file")
    encode.add_argument("output", help="output .npz")
    encode.add_argument("--codec", default="alm_tokenizer", help="a token or latent codec checkpoint name or folder")
    encode.add_argument("--window", type=_number(int, 1, 64), help=window_help)
    encode.add_argument("--max-seconds", type=_number(float, 0.1, 3600), default=600.0, help="refuse longer inputs")
    encode.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    encode.set_defaults(run=_codec_encode)
    decode = codec_commands.add_parser("decode", help="codes (.npz from codec encode) -> audio")
    decode.add_argument("input", help="an .npz written by codec encode")
    decode.add_argument("output", help="output .wav, .flac or .ogg (22.05 kHz)")
    decode.add_argument("--codec", help="decode with this checkpoint instead of the one the file names")
    decode.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    decode.set_defaults(run=_codec_decode)

    semantic_codec = codec_commands.add_parser(
        "semantic", help="audio -> semantic tokens -> an acoustic decoder's codec tokens -> audio (what the "
                         "semantic tokens keep); the decoder's own settings are options too")
    semantic_codec.add_argument("input", help="audio file")
    semantic_codec.add_argument("output", help="output .wav, .flac or .ogg (22.05 kHz)")
    semantic_codec.add_argument("--decoder", required=True, help="an acoustic-decoder checkpoint name or folder")
    semantic_codec.add_argument("--prompt", help="a clip whose voice the decoder continues")
    semantic_codec.add_argument("--seed", type=_number(int, 0, MAX_SEED), help="random seed (default: drawn)")
    semantic_codec.add_argument("--overwrite", action="store_true", help="replace the output file if it exists")
    semantic_codec.set_defaults(run=_codec_semantic, takes_model_options=True)

    evaluate = commands.add_parser("eval", help="score systems on a manifest (resumable, shardable)",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_argument("--manifest", required=True, help="seed-tts-eval .lst or JSONL (corpus or task set)")
    evaluate.add_argument("--split", help="only rows of this split (corpus manifests)")
    evaluate.add_argument("--system", action="append", required=True, metavar="NAME[=DIR_OR_MODEL]",
                          help="gt, input, vocoder, NAME=FOLDER of <utt>.wav, NAME=CODEC_CHECKPOINT, "
                               "NAME=TTS_CHECKPOINT[:cfg=2:seed=0:stop=0.5], NAME=SPEECH_CHECKPOINT[:seed=0], or "
                               "NAME=ACOUSTIC_DECODER[:seed=0] (the reference's semantic tokens spoken again, in "
                               "the enrollment clip's voice); repeat or comma-separate")
    evaluate.add_argument("--metrics", default="wer,sim",
                          help="comma list of the metrics listed below (rtf is measured whenever a system generates)")
    evaluate.format_help = lambda: _with_epilog(evaluate, _metrics_help)  # the registry is read only for help
    evaluate.add_argument("--out", required=True, help="run folder for results, audio and reports")
    evaluate.add_argument("--resume", action="store_true", help="continue a run, skipping finished units")
    evaluate.add_argument("--shard", metavar="I/N", help="this process takes every N-th item from I "
                                                          "(default: torchrun's RANK/WORLD_SIZE)")
    evaluate.add_argument("--limit", type=_number(int, 1, None), help="only the first N items")
    evaluate.add_argument("--per-speaker", type=_number(int, 1, None),
                          help="only the first N items of each speaker")
    evaluate.add_argument("--asr", help="ASR as BACKEND:MODEL (default faster-whisper:tiny.en)")
    evaluate.add_argument("--latent-codec", help="codec for the latent metric (default vocoder: log-mel)")
    evaluate.add_argument("--seed", type=_number(int, 0, MAX_SEED), default=0, help="bootstrap seed")
    evaluate.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    evaluate.set_defaults(run=_eval)

    report = commands.add_parser("report", help="CSV, JSON and HTML report of an eval run folder")
    report.add_argument("folder", help="the --out folder of speech-studio eval")
    report.add_argument("--seed", type=_number(int, 0, MAX_SEED), default=0, help="bootstrap seed")
    report.set_defaults(run=_report)

    probe = commands.add_parser("probe", help="what a token codec's frozen tokens hold: a CTC phoneme probe on "
                                              "layer 1 (PER), or a token LM on the upper layers (bits per token)")
    probe.add_argument("kind", choices=["phonemes", "tokens"])
    probe.add_argument("--codec", action="append", required=True, metavar="[LABEL=]CHECKPOINT",
                       help="a token codec checkpoint; repeat to compare codecs on the same data and seeds")
    probe.add_argument("--corpus", required=True, help="corpus folder (train split trains, valid split scores)")
    probe.add_argument("--window", type=_number(int, 1, 64), help="the codecs' window (default: each one's own)")
    probe.add_argument("--train-items", type=_number(int, 10, None), default=2000)
    probe.add_argument("--test-items", type=_number(int, 2, None), default=300)
    probe.add_argument("--steps", type=_number(int, 1, None), default=1500)
    probe.add_argument("--seed", type=_number(int, 0, MAX_SEED), default=0)
    probe.add_argument("--out", help="also write the JSON here")
    probe.set_defaults(run=_probe)

    bench = commands.add_parser("bench", help="measure speed and quality, print JSON")
    bench.add_argument("target", choices=list(BENCH_TARGETS),
                       help="; ".join(f"{name}: {line}" for name, (line, _) in BENCH_TARGETS.items()))
    bench.add_argument("--manifest", help="codec: an eval manifest whose reference recordings are reconstructed")
    bench.add_argument("--per-speaker", type=_number(int, 1, None), default=2,
                       help="codec: recordings per speaker")
    bench.add_argument("--input", help="vocoder, tokens: recording to code (default: the CMU ARCTIC fixture)")
    bench.add_argument("--precision", choices=["fp32", "bf16"], help="vocoder: synthesis precision (default: both)")
    bench.add_argument("--model", help="tts, studio: a TTS checkpoint name or folder (default sled); "
                       "codec: a codec checkpoint (default flow_vae)")
    bench.add_argument("--size-mb", type=_number(float, 1, 4096), default=460.0, help="upload: file size")
    bench.add_argument("--voters", type=_number(int, 1, 200), default=20, help="arena: concurrent voters")
    bench.add_argument("--votes", type=_number(int, 1, 1000), default=5, help="arena: votes per voter")
    bench.add_argument("--text", help="tts: one sentence to speak instead of the built-in five")
    bench.add_argument("--seeds", type=_number(int, 1, 1000), default=50, help="voices: voice seeds 0..N-1")
    bench.add_argument("--corpus", help="voices: a corpus whose training speakers measure novelty")
    bench.add_argument("--cfg", type=_number(float, *CFG_RANGE), default=2.0, help="tts: guidance scale")
    bench.add_argument("--repeats", type=_number(int, 1, 100), default=3,
                       help="vocoder, studio: timed runs after the warm-up (best is kept); startup: fresh processes "
                            "per command (the median is kept)")
    bench.add_argument("--eval-run", action="append", dest="eval_runs",
                       help="asr: an eval run folder whose WER clips are transcribed (repeat for more)")
    bench.add_argument("--per-run", type=_number(int, 1, None), default=30, help="asr: clips drawn per run folder")
    bench.add_argument("--asr", help="asr: the candidate decoding, BACKEND:MODEL (default faster-whisper:tiny.en)")
    bench.add_argument("--baseline-asr", default="faster-whisper-30s:tiny.en",
                       help="asr: the decoding it is compared with")
    bench.add_argument("--out", help="also write the JSON here")
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "takes_model_options", False):
        parser.parse_args(argv)  # the usual one-line error for an unknown argument
    args.extra = extra
    if args.device:
        os.environ["STUDIO_DEVICE"] = args.device  # read by models.registry.pick_device
    before = os.environ.get("STUDIO_VOCODER")
    try:
        if args.vocoder:
            from models.vocoder import check_vocoder

            # read by models.vocoder.current_vocoder, in every thread the command starts
            os.environ["STUDIO_VOCODER"] = check_vocoder(args.vocoder)
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:  # user input; bugs keep their traceback
        print(f"speech-studio {args.command}: error: {error}", file=sys.stderr)
        return 2
    finally:  # main() called in-process (tests, the studio's bench) leaves the environment as it found it
        if before is None:
            os.environ.pop("STUDIO_VOCODER", None)
        else:
            os.environ["STUDIO_VOCODER"] = before


if __name__ == "__main__":
    sys.exit(main())
