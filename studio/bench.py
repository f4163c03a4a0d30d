"""Measurements of the studio itself (`speech-studio bench studio|arena`), printed as JSON:
launch-to-ready time, synthesis latency through the served UI against the pipeline called
directly, and the A/B vote store under concurrent voters on loopback."""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from evaluation.bench import BENCH_TEXT, hardware
from models import audio
from models.registry import REPO_ROOT
from studio.config import StudioConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(config: StudioConfig):
    """The studio built from `config`, served on a loopback port for the duration: yields its URL."""
    from studio.app import build_app, launch

    port = free_port()
    demo = build_app(config)
    launch(demo, port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def launch_time(timeout: float = 300.0) -> dict:
    """Seconds from starting `speech-studio serve` in a fresh process until its page answers."""
    port = free_port()
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "studio", "serve", "--port", str(port)], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while time.perf_counter() - start < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"the studio exited with {process.returncode}: {process.stderr.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                    if response.status == 200:
                        return {"launch_to_ready_s": round(time.perf_counter() - start, 2)}
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"the studio was not ready after {timeout:.0f} s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def ui_latency(model: str, text: str = BENCH_TEXT, repeats: int = 3, cfg: float = 2.0, seed: int = 0) -> dict:
    """Median seconds per synthesis through the served Synthesize tab (gradio_client, loopback)
    and through pipelines.tts directly, same model, text and seed; each after one warm-up."""
    from gradio_client import Client

    from models import pipelines

    def direct() -> float:
        start = time.perf_counter()
        pipelines.tts(text, model, cfg=cfg, seed=seed)
        return time.perf_counter() - start

    with served(StudioConfig(data_dir=Path(tempfile.mkdtemp(prefix="studio-bench-")), systems=[])) as url:
        client = Client(url, verbose=False)

        def through_ui() -> float:
            start = time.perf_counter()
            client.predict(model, text, None, "", cfg, seed, False, api_name="/synthesize")
            return time.perf_counter() - start

        direct(), through_ui()  # warm-ups: model loads, caches
        ui, pipe = [], []
        for _ in range(repeats):  # interleaved, so drift in machine load hits both alike
            pipe.append(direct())
            ui.append(through_ui())
    median_ui, median_pipe = statistics.median(ui), statistics.median(pipe)
    return {"model": model, "text": text, "repeats": repeats, "pipeline_s": round(median_pipe, 3),
            "ui_s": round(median_ui, 3), "ui_overhead_pct": round(100 * (median_ui / median_pipe - 1), 1),
            "pipeline_runs_s": [round(x, 3) for x in pipe], "ui_runs_s": [round(x, 3) for x in ui]}


def tone_testset(root: Path, prompts: int) -> StudioConfig:
    """Two file-backed systems over `prompts` one-second tones: the load falls on the vote path."""
    rows = []
    for system, freq in (("gt", 220.0), ("other", 330.0)):
        (root / system).mkdir(parents=True, exist_ok=True)
        for k in range(prompts):
            t = np.arange(audio.SAMPLE_RATE) / audio.SAMPLE_RATE
            audio.save_audio(root / system / f"u{k}.wav", 0.3 * np.sin(2 * np.pi * (freq + 10 * k) * t))
    for k in range(prompts):
        rows.append(json.dumps({"id": f"u{k}", "text": f"tone {k}", "path": f"gt/u{k}.wav"}))
    (root / "tones.jsonl").write_text("\n".join(rows) + "\n")
    return StudioConfig(data_dir=root / "studio", testsets={"tones": str(root / "tones.jsonl")},
                        systems=["gt", f"other={root / 'other'}"])


def arena_load(voters: int = 20, votes: int = 5, prompts: int = 4) -> dict:
    """`voters` concurrent listeners, each with its own session, cast `votes` votes through the
    served A/B tab (new pair, play A, play B, vote, and the same vote again as a double click).
    Every acknowledged vote must be in the store exactly once."""
    from gradio_client import Client

    from evaluation.arena import VoteStore

    root = Path(tempfile.mkdtemp(prefix="studio-arena-"))
    config = tone_testset(root, prompts)
    # The load is on the store and the served vote path: listening time and rate limits (tested on their own)
    # would refuse a script's votes.
    config.arena_min_listen, config.arena_vote_gap_s, config.arena_votes_per_hour = 0.0, 0.0, 10**6
    outcomes = ["A", "B", "tie", "both_bad"]
    expected: list[str] = []
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    with served(config) as url:
        def voter(number: int) -> None:
            client = Client(url, verbose=False)
            for k in range(votes):
                try:
                    client.predict("tones", "(random prompt)", api_name="/ab_new_pair")
                    client.predict(api_name="/ab_played_a")
                    client.predict(api_name="/ab_played_b")
                    outcome = outcomes[(number + k) % len(outcomes)]
                    start = time.perf_counter()
                    client.predict(api_name=f"/ab_vote_{outcome}")
                    seconds = time.perf_counter() - start
                    client.predict(api_name=f"/ab_vote_{outcome}")  # a double click: must not count twice
                    with lock:
                        latencies.append(seconds)
                        expected.append(outcome)
                except Exception as error:  # counted and reported: the bench measures failures too
                    with lock:
                        errors.append(f"voter {number}: {error!r}")

        began = time.perf_counter()
        with ThreadPoolExecutor(voters) as pool:
            list(pool.map(voter, range(voters)))
        wall = time.perf_counter() - began
    rows = VoteStore(config.data_dir / "arena" / "votes.sqlite").rows()
    stored = [r["outcome"] for r in rows]
    return {"voters": voters, "votes_per_voter": votes, "acknowledged": len(expected), "stored": len(rows),
            "duplicated": len(rows) - len({r["match_id"] for r in rows}),
            "lost": max(0, len(expected) - len(rows)),
            "outcomes_match": sorted(stored) == sorted(expected), "errors": errors[:10], "error_count": len(errors),
            "wall_s": round(wall, 2), "votes_per_s": round(len(rows) / wall, 2),
            "vote_latency_p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
            "vote_latency_p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies else None,
            "hardware": hardware()}


# The main action of each tab, called with the values its widgets start with.
TAB_ACTIONS = ("synthesize", "synthesize_stream", "ab_new_pair", "cfg_sweep", "evaluate", "latents", "resynthesize",
               "convert", "enhance", "extract")


def tab_defaults(config: StudioConfig | None = None) -> dict:
    """Every tab's main action through the served studio with its starting values, plus the
    Synthesize example, and the Resynthesis, Voice conversion, Enhancement and Speaker extraction examples (those
    tabs start with no audio): whether each gives a result, what, and in how long."""
    import gradio as gr
    from gradio_client import Client, handle_file

    from studio.app import build_app
    from studio.tabs.resynthesis import EXAMPLE
    from studio.tabs.speech import EXAMPLES
    from studio.tabs.synthesize import EXAMPLE_REFERENCE, EXAMPLE_REFERENCE_TEXT

    config = config or StudioConfig(data_dir=Path(tempfile.mkdtemp(prefix="studio-defaults-")))
    starting = {fn.api_name: [component.value for component in fn.inputs if not isinstance(component, gr.State)]
                for fn in build_app(config).fns.values() if fn.api_name in TAB_ACTIONS}
    calls = [(name, starting[name]) for name in TAB_ACTIONS]
    example = list(starting["synthesize"])
    example[2:4] = [handle_file(str(EXAMPLE_REFERENCE)), EXAMPLE_REFERENCE_TEXT]
    calls.insert(2, ("synthesize (example reference)", example))
    examples = {"resynthesize": [str(EXAMPLE)], **{task: EXAMPLES[task][0] for task in ("convert", "enhance",
                                                                                        "extract")}}
    for action, files in examples.items():
        first = 0 if action == "resynthesize" else 1  # the speech tabs' first input is the model menu
        values = list(starting[action])
        values[first:first + len(files)] = [handle_file(f) for f in files]
        calls[[label for label, _ in calls].index(action)] = (f"{action} (example)", values)
    results = []
    with served(config) as url:
        client = Client(url, verbose=False)
        for label, values in calls:
            start = time.perf_counter()
            try:
                output = client.predict(*values, api_name="/" + label.split(" ")[0])
                entry = {"result": _summary(output)}
            except Exception as error:  # what a visitor would see instead of a result
                entry = {"error": str(error)[:300]}
            results.append({"action": label, "ok": "error" not in entry,
                            "seconds": round(time.perf_counter() - start, 1), **entry})
    return {"testsets": list(config.testsets), "systems": config.systems, "actions": results,
            "all_ok": all(r["ok"] for r in results), "hardware": hardware()}


def _summary(output) -> list:
    """A short, JSON-safe description of an API answer: audio durations, status lines, sizes."""
    parts = output if isinstance(output, (list, tuple)) else [output]
    summary = []
    for part in parts:
        if isinstance(part, str) and Path(part).suffix in (".wav", ".mp3", ".aac", ".ogg") and Path(part).is_file():
            summary.append(f"audio {len(audio.load_audio(part, max_seconds=None)) / audio.SAMPLE_RATE:.2f} s")
        elif isinstance(part, str) and len(part) < 300:
            summary.append(part)
        elif isinstance(part, dict) and "rtf" in part:
            summary.append({k: part[k] for k in ("seed", "frames", "seconds", "rtf") if k in part})
    return summary


def upload_limit(size_mb: float = 460.0) -> dict:
    """A `size_mb` WAV uploaded to a fresh `speech-studio serve` (Resynthesis tab): the answer, how
    long it took, and the server's peak memory (Linux VmHWM) before and after."""
    import httpx
    import soundfile as sf
    from gradio_client import Client, handle_file

    def peak_mb(pid: int) -> float:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    root = Path(tempfile.mkdtemp(prefix="studio-upload-"))
    big = root / "big.wav"
    frames = int(size_mb * 2**20 / 4)  # 16-bit stereo
    with sf.SoundFile(big, "w", samplerate=44100, channels=2, subtype="PCM_16") as out:  # low noise, in blocks
        block = (np.random.default_rng(0).standard_normal((441000, 2)) * 0.05).astype(np.float32)
        for start in range(0, frames, len(block)):
            out.write(block[:frames - start])
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "studio", "serve", "--port", str(port), "--data",
                                str(root / "data")], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        client = None
        for _ in range(600):
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                time.sleep(0.5)
        if client is None:
            raise RuntimeError("the studio did not start")
        before = peak_mb(process.pid)
        start = time.perf_counter()
        try:  # the page's own client checks the limit before sending
            client.predict(handle_file(str(big)), "vocoder", api_name="/resynthesize")
            answer = "accepted"
        except Exception as error:
            answer = str(error)[:300]
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        with big.open("rb") as f:  # a raw upload that skips that check: the server must refuse it too
            response = httpx.post(f"http://127.0.0.1:{port}/gradio_api/upload", files={"files": ("big.wav", f)},
                                  timeout=600)
        raw = {"status": response.status_code, "body": response.text[:200],
               "seconds": round(time.perf_counter() - start, 2)}
        after = peak_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
        size = big.stat().st_size
        shutil.rmtree(root, ignore_errors=True)
    return {"file_mb": round(size / 2**20, 1), "answer": answer, "seconds": round(seconds, 2),
            "raw_http_upload": raw,
            "server_peak_mb_before": round(before, 1), "server_peak_mb_after": round(after, 1),
            "hardware": hardware()}
