"""The repository runs as a Hugging Face Space runs it: a fresh virtual environment from requirements.txt
only (packages.txt is already installed, as on a Space), `python app.py` with the host and port from the
environment a Space sets, then a synthesis through gradio_client."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from models.registry import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_repository_starts_as_a_space_and_synthesizes(tmp_path):
    from gradio_client import Client

    venv = tmp_path / "space-venv"
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r",
                              str(REPO_ROOT / "requirements.txt")], capture_output=True, text=True, timeout=1500)
    assert install.returncode == 0, install.stderr[-3000:]
    installed = time.perf_counter() - began

    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), STUDIO_DATA=str(tmp_path / "data"),
               HF_HUB_OFFLINE="1", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    log = (tmp_path / "space.log").open("w")
    space = subprocess.Popen([str(python), "app.py"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        start = time.perf_counter()
        while True:
            assert space.poll() is None, (tmp_path / "space.log").read_text()[-3000:]
            assert time.perf_counter() - start < 300, "the Space was not ready after 300 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        ready = time.perf_counter() - start
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/synthesize"]
        defaults = [p.get("parameter_default") for p in api["parameters"]]
        wav, _, settings, seed = client.predict("sled", "Hello from the Space.", None, "", *defaults[4:],
                                                api_name="/synthesize")
        assert Path(wav).stat().st_size > 1000 and settings["model"] == "sled" and seed == 0
    finally:
        space.terminate()
        space.wait(timeout=30)
        log.close()
    print(f"space: install {installed:.0f} s, ready {ready:.1f} s")


def test_a_space_push_takes_the_tracked_files_only():
    from studio.space import HUB_FILE_LIMIT, space_files

    files = space_files()
    assert {"app.py", "requirements.txt", "packages.txt", "README.md"} <= set(files)
    assert "assets/checkpoints/sled/model.safetensors" in files  # the shipped checkpoints go (through LFS)
    assert any((REPO_ROOT / f).stat().st_size > HUB_FILE_LIMIT for f in files)
    assert not any(f.startswith(("data/", "runs/", ".venv/", "outputs/")) for f in files)
