"""Measurements of the studio itself (`speech-studio bench studio|arena`), printed as JSON:
launch-to-ready time, synthesis latency through the served UI against the pipeline called
directly, and the A/B vote store under concurrent voters on loopback."""

from __future__ import annotations

import json
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
