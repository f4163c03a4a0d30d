"""Speed and quality benchmarks that print JSON (`speech-studio bench ...`)."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from evaluation.metrics import pesq_score, stoi_score
from models import audio
from models.files import write_text_atomic
from models.vocoder import get_vocoder

BENCH_TEXT = "A quiet morning on the lake gives the best light for painting the far hills."
# Each sentence is spoken once: repeating one text reuses its input shapes, whose kernels the
# CPU backend built on the first call, and would hide a cost every new text pays.
BENCH_TEXTS = (
    BENCH_TEXT,
    "Bring the red box in from the garden before it rains.",
    "The old clock in the hall stopped at a quarter past nine, and nobody wound it again.",
    "Please call me back tomorrow.",
    "We walked along the river until the lights of the town came into view.",
)
WARMUP_TEXT = "This sentence loads the model before the clock starts."


def hardware() -> dict:
    info = {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def bench_vocoder(path: str | os.PathLike, device: str | None = None, repeats: int = 3,
                  precisions: tuple[str, ...] = ("fp32", "bf16"), names: list[str] | None = None) -> dict:
    """Analysis-resynthesis of one recording by each vocoder (HiFi-GAN and every vocoder checkpoint, or
    `names`) at each precision, side by side: PESQ-wb/nb, STOI, ESTOI, RTF (best of `repeats` after a
    warm-up), GFLOPs per second of audio (torch.utils.flop_counter: convolutions and matrix products; an
    inverse FFT is not counted) and the speed against HiFi-GAN at fp32."""
    from torch.utils.flop_counter import FlopCounterMode

    from models.vocoder import HIFIGAN, vocoder_names

    wav = audio.load_audio(path)
    seconds = len(wav) / audio.SAMPLE_RATE
    rows = []
    for name in names or vocoder_names():
        for precision in precisions:
            vocoder = get_vocoder(device, precision, name=name)
            out = vocoder.resynthesize(wav)  # warm-up, and the output we score
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                vocoder.resynthesize(wav)
                times.append(time.perf_counter() - start)
            counter = FlopCounterMode(display=False)
            with counter:
                vocoder.resynthesize(wav)
            rows.append({
                "vocoder": name, "precision": precision, "device": str(vocoder.device),
                "pesq_wb": round(pesq_score(wav, out, audio.SAMPLE_RATE, "wb"), 3),
                "pesq_nb": round(pesq_score(wav, out, audio.SAMPLE_RATE, "nb"), 3),
                "stoi": round(stoi_score(wav, out, audio.SAMPLE_RATE), 4),
                "estoi": round(stoi_score(wav, out, audio.SAMPLE_RATE, extended=True), 4),
                "rtf": round(min(times) / seconds, 4),
                "gflops_per_audio_second": round(counter.get_total_flops() / seconds / 1e9, 3),
            })
    baseline = next((r["rtf"] for r in rows if r["vocoder"] == HIFIGAN and r["precision"] == "fp32"), None)
    for row in rows:
        row["speedup_vs_hifigan_fp32"] = round(baseline / row["rtf"], 2) if baseline and row["rtf"] else None
    return {"input": Path(path).name, "seconds": round(seconds, 3), "vocoders": rows, "hardware": hardware()}


def bench_startup(model: str = "sled", path: str | os.PathLike | None = None, repeats: int = 5,
                  text: str = "The birch canoe slid on the smooth planks.", seconds: float = 4.0) -> dict:
    """Process wall time of one-shot commands, each in a fresh process (what a user of the CLI waits for):
    `vocode` of the first `seconds` of a recording, and `tts` of one sentence with `model`; the median of
    `repeats` runs each, and their ratio."""
    import statistics
    import subprocess
    import sys
    import tempfile

    from models.registry import ASSETS

    wav = audio.load_audio(path or ASSETS / "audio" / "arctic_a0007.wav")
    timings: dict[str, list[float]] = {"vocode": [], "tts": []}
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.wav"
        audio.save_audio(clip, wav[: int(seconds * audio.SAMPLE_RATE)])
        commands = {"vocode": ["vocode", str(clip), str(Path(folder) / "v.wav"), "--overwrite"],
                    "tts": ["tts", "--model", model, "--text", text, "--seed", "0", "--out",
                            str(Path(folder) / "t.wav"), "--overwrite"]}
        for _ in range(repeats):
            for name, arguments in commands.items():
                start = time.perf_counter()
                done = subprocess.run([sys.executable, "-m", "studio", *arguments], capture_output=True, text=True)
                timings[name].append(time.perf_counter() - start)
                if done.returncode:
                    raise ValueError(f"speech-studio {' '.join(arguments)} failed: {done.stderr.strip()[-300:]}")
    medians = {name: statistics.median(values) for name, values in timings.items()}
    return {"model": model, "vocode_seconds_of_audio": seconds, "repeats": repeats,
            "median_s": {k: round(v, 3) for k, v in medians.items()},
            "runs_s": {k: [round(x, 3) for x in v] for k, v in timings.items()},
            "tts_over_vocode": round(medians["tts"] / medians["vocode"], 3), "hardware": hardware()}


def bench_token_codec(codec: str, path: str | os.PathLike, device: str | None = None, repeats: int = 3) -> dict:
    """Encode and decode speed of a token codec at each window on one recording (best of `repeats`
    after a warm-up): audio -> tokens, tokens -> mel, and the shared vocoder's mel -> audio, as RTF."""
    from models import registry

    model, _, _ = registry.load_model(codec, device)
    wav = audio.load_audio(path)
    seconds = len(wav) / audio.SAMPLE_RATE
    vocoder = get_vocoder(str(next(model.parameters()).device))

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times) / seconds

    windows = {}
    for window in model.windows:
        tokens = model.encode_wav(wav, window)
        mel = model.decode_mel(tokens, window)
        windows[str(window)] = {
            "bitrate": round(model.bitrate_at(window), 1), "tokens": list(tokens.shape),
            "encode_rtf": round(best(lambda: model.encode_wav(wav, window)), 4),
            "decode_rtf": round(best(lambda: model.decode_mel(tokens, window)), 4),
            "vocoder_rtf": round(best(lambda: vocoder.synthesize(mel)), 4)}
    return {"codec": str(codec), "input": Path(path).name, "seconds": round(seconds, 3),
            "device": str(next(model.parameters()).device), "windows": windows, "hardware": hardware()}


def bench_codec(codec: str, manifest: str | os.PathLike, per_speaker: int = 1, steps: int = 150,
                lr: float = 0.05) -> dict:
    """Where a latent codec's reconstruction loses quality: encoder or decoder.

    Per utterance: log-mel L1 and PESQ-wb of the vocoder alone, of encode -> decode, and of
    latents optimized by gradient descent against the frozen decoder (its best output for
    that recording). A large encode -> optimized gap means the encoder, not the decoder, limits.
    """
    from evaluation.systems import read_items
    from models import registry

    model, _, _ = registry.load_model(codec, "cpu")
    model.eval().requires_grad_(False)
    vocoder = get_vocoder("cpu", "fp32")
    by_speaker: dict[str, list] = {}
    for item in read_items(manifest):
        if item.reference is not None:  # the recording to reconstruct (a TTS list's ground truth)
            by_speaker.setdefault(item.speaker, []).append(item)
    rows = []
    for speaker, items in sorted(by_speaker.items()):
        for item in items[:per_speaker]:
            wav = audio.load_audio(item.reference)
            mel = audio.mel_spectrogram(wav).unsqueeze(0)
            mu, _ = model.encode(mel)
            z = mu.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([z], lr=lr)
            for _ in range(steps):
                loss = (model.decode(z)[..., : mel.shape[-1]] - mel).abs().mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            row = {"key": item.key, "speaker": speaker}
            with torch.no_grad():
                for name, latents in (("encoded", mu), ("optimized", z)):
                    out = model.decode(latents)[0, :, : mel.shape[-1]]
                    row[f"{name}_mel_l1"] = round(float((out - mel[0]).abs().mean()), 4)
                    heard = vocoder.synthesize(out).numpy()
                    row[f"{name}_pesq_wb"] = round(pesq_score(wav, heard, audio.SAMPLE_RATE), 3)
                heard = vocoder.synthesize(mel[0]).numpy()
                row["vocoder_pesq_wb"] = round(pesq_score(wav, heard, audio.SAMPLE_RATE), 3)
            rows.append(row)
    if not rows:
        raise ValueError(f"{manifest}: no utterance with a reference recording to reconstruct")
    means = {k: round(sum(r[k] for r in rows) / len(rows), 4) for k in rows[0] if k not in ("key", "speaker")}
    return {"codec": str(codec), "manifest": str(manifest), "utterances": len(rows), "optimizer_steps": steps,
            "mean": means, "items": rows, "hardware": hardware()}


def bench_tts(model: str = "sled", texts: tuple[str, ...] = BENCH_TEXTS, device: str | None = None,
              cfg: float = 2.0, seed: int = 0, chunk_frames: tuple[int, int] = (20, 20)) -> dict:
    """TTS speed after a warm-up on another sentence: offline RTF (generation + decoding) and
    streaming latency, each text spoken once each way; then, untimed, the FLOPs per second of audio.

    rtf = total wall time / total audio duration over the texts; first_chunk_s is the time from a
    streaming call to its first non-empty audio chunk (worst and mean over texts); stream_rtf
    covers whole streams. Measured as a server runs: the bf16 vocoder's kernels built for every length first.
    """
    from models import pipelines

    os.environ.setdefault("STUDIO_VOCODER_WARM_UP", "1")

    def speak(text: str, index: int, stream: bool):
        start = time.perf_counter()
        result, info = pipelines.tts(text, model, cfg=cfg, seed=seed + index, device=device, stream=stream,
                                     chunk_frames=chunk_frames)
        if not stream:
            return time.perf_counter() - start, None, len(result), info
        first, samples = None, 0
        for chunk in result:
            if first is None and len(chunk):
                first = time.perf_counter() - start
            samples += len(chunk)
        return time.perf_counter() - start, first, samples, info

    speak(WARMUP_TEXT, 0, False)  # loads the model and codec, first-call allocations
    speak(WARMUP_TEXT, 0, True)
    offline = [speak(text, i, False) for i, text in enumerate(texts)]
    streamed = [speak(text, i, True) for i, text in enumerate(texts)]
    if any(not run[2] for run in offline) or any(run[1] is None for run in streamed):
        raise ValueError(f"{model} produced no audio for one of {list(texts)!r}")
    audio_seconds = sum(run[2] for run in offline) / audio.SAMPLE_RATE
    firsts = [run[1] for run in streamed]
    return {
        "model": model, "texts": list(texts), "cfg": cfg, "seed": seed, "device": offline[0][3]["device"],
        "audio_seconds": round(audio_seconds, 3), "frames": sum(run[3].get("frames", 0) for run in offline),
        "rtf": round(sum(run[0] for run in offline) / audio_seconds, 4),
        "rtf_per_text": [round(run[0] / (run[2] / audio.SAMPLE_RATE), 4) for run in offline],
        "first_chunk_s": round(max(firsts), 4), "first_chunk_mean_s": round(sum(firsts) / len(firsts), 4),
        "stream_rtf": round(sum(run[0] for run in streamed) / (sum(run[2] for run in streamed) / audio.SAMPLE_RATE), 4),
        "chunk_frames": list(chunk_frames), "flops": tts_flops(model, texts, device, cfg, seed),
        "hardware": hardware(),
    }


def tts_flops(model: str, texts: tuple[str, ...], device: str | None = None, cfg: float = 2.0, seed: int = 0,
              ) -> dict:
    """Floating-point operations per second of audio (torch.utils.flop_counter: matrix products,
    convolutions and attention, the work that dominates) over the texts. For a backend that streams
    frames (models.roles.STREAMING), the generator (its frames, guidance branches included) and the
    decoding (codec decoder and vocoder) apart; for another, its synthesis in all."""
    from torch.utils.flop_counter import FlopCounterMode

    from models import registry
    from models.roles import STREAMING, TTSRequest

    backend = registry.load_model(model, device)[0]
    streams = STREAMING in backend.CAPABILITIES
    generating, decoding, samples = FlopCounterMode(display=False), FlopCounterMode(display=False), 0
    for index, text in enumerate(texts):
        request = TTSRequest(text, cfg=None if cfg == 1.0 else cfg, seed=seed + index)
        if not streams:
            with generating:
                samples += len(backend.synthesize(request))
            continue
        with generating:
            frames = list(backend.frames(request))
        if frames:
            with decoding:
                decoder = backend.streaming_decoder()  # all frames in one push: decoded at once
                samples += len(decoder.push(frames)) + len(decoder.flush())
    if not samples:
        raise ValueError(f"{model} produced no audio for {list(texts)!r}")
    seconds = samples / audio.SAMPLE_RATE
    per_second = {"generator": generating.get_total_flops() / seconds}
    if streams:
        per_second["decoding"] = decoding.get_total_flops() / seconds
    return {"per_audio_second": {**per_second, "total": sum(per_second.values())}, "audio_seconds": round(seconds, 3)}


def write_json(result: dict, out: str | os.PathLike | None) -> str:
    text = json.dumps(result, indent=2)
    if out:
        write_text_atomic(out, text + "\n")
    return text


def bench_asr(runs: list[str | os.PathLike], candidate: str, baseline: str, per_run: int = 30, seed: int = 0,
              log=print) -> dict:
    """Two ASR decodings on the same clips: the outputs and references that stored eval runs scored for WER.

    Each decoding transcribes every clip twice (its repeatability), with the runner's one-utterance-per-core
    threads; the report has utterances per minute (of the second pass, after the first has warmed up), the
    mean WER, and the paired WER difference (candidate - baseline) with its 95 % bootstrap interval, over all
    clips and per run folder. A recording that several runs scored is drawn once.
    """
    import random
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from evaluation.metrics.asr import load_asr, normalize_for_wer, wer_counts
    from evaluation.report import bootstrap_ci
    from evaluation.results import latest_rows, read_results
    from evaluation.systems import read_items

    if candidate == baseline:
        raise ValueError(f"bench asr compares two decodings; both are {candidate!r}")
    clips, drawn = [], set()  # (run, text, path)
    for run in map(Path, runs):
        metas = sorted((run / "results").glob("*.meta.json"))
        if not metas:
            raise FileNotFoundError(f"{run}: not an eval run folder (no results/*.meta.json)")
        items = {item.key: item for item in read_items(json.loads(metas[0].read_text())["manifest"])}
        found = {}
        for row in latest_rows(read_results(run)):
            item = items.get(row["key"])
            if row["metric"] != "wer" or row.get("values") is None or item is None or not item.text:
                continue
            path = run / "audio" / row["system"] / f"{row['key']}.wav"
            path = path if path.is_file() else (item.reference if row["system"] == "gt" else None)
            if path is not None and Path(path).is_file() and (str(path), item.text) not in drawn:
                found[(str(path), item.text)] = (str(run), item.text, Path(path))
        chosen = sorted(found.values(), key=lambda clip: str(clip[2]))
        random.Random(seed).shuffle(chosen)
        clips += chosen[:per_run]
        drawn.update((str(path), text) for _, text, path in chosen[:per_run])
    if not clips:
        raise ValueError("no scored WER clips in these run folders")
    waves = [audio.load_audio(path, 16000) for _, _, path in clips]
    texts = [text for _, text, _ in clips]
    result = {"clips": len(clips), "runs": sorted({run for run, _, _ in clips}), "per_run": per_run,
              "hardware": hardware(), "decodings": {}}
    wers = {}
    for spec in (baseline, candidate):
        asr = load_asr(spec, "cpu", workers=torch.get_num_threads())
        passes = []
        for _ in range(2):
            start = time.perf_counter()
            with ThreadPoolExecutor(asr.workers) as pool:
                passes.append(list(pool.map(asr.transcribe, waves)))
            seconds = time.perf_counter() - start
            log(f"{spec}: {len(waves) / seconds * 60:.1f} utterances per minute")
        wers[spec] = np.array([wer_counts(text, hyp).rate for text, hyp in zip(texts, passes[0])])
        changed = sum(normalize_for_wer(a) != normalize_for_wer(b) for a, b in zip(*passes))
        result["decodings"][spec] = {**asr.info, "utterances_per_minute": round(len(waves) / seconds * 60, 1),
                                     "wer": round(float(wers[spec].mean()), 4),
                                     "transcripts_changed_on_a_second_pass": int(changed)}
    def paired(index: np.ndarray) -> dict:
        diff = wers[candidate][index] - wers[baseline][index]
        low, high = bootstrap_ci(diff, seed)
        return {"n": len(index), "baseline": round(float(wers[baseline][index].mean()), 4),
                "candidate": round(float(wers[candidate][index].mean()), 4),
                "difference": round(float(diff.mean()), 4), "ci95": [round(float(low), 4), round(float(high), 4)]}

    result["paired_wer_candidate_minus_baseline"] = {
        "all": paired(np.arange(len(clips))),
        "by_run": {run: paired(np.array([i for i, clip in enumerate(clips) if clip[0] == run]))
                   for run in result["runs"]}}
    return result
