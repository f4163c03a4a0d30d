import re

import tomllib
import yaml

from tests.conftest import REPO


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_space_requirements_match_the_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("#")]
    assert {_name(r) for r in project["dependencies"]} == {_name(r) for r in requirements} - {"spaces"}
    assert "torch==2.13.0" in requirements


def test_torch_is_pinned_for_every_install():
    pins = (REPO / "constraints.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", pins, re.M)
    assert "--constraint constraints.txt" in (REPO / "Makefile").read_text()


def test_readme_is_a_space_card():
    readme = (REPO / "README.md").read_text()
    front = yaml.safe_load(readme.split("---", 2)[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert "make studio" in readme and "make test" in readme
