"""environment.yml (conda), requirements.txt (pip) and pyproject.toml list the same packages."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def requirement_names(lines):
    out = {}
    for line in lines:
        line = line.split("#")[0].strip().lstrip("- ").strip()
        if not line or line.startswith(("python=", "pip:")) or line == "pip":
            continue
        name, _, pin = re.split(r"(==|=)", line, maxsplit=1) if re.search(r"==|=", line) else (line, "", "")
        out[name.strip().lower()] = pin.strip()
    return out


def test_conda_and_pip_lists_agree():
    pip = requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    text = (ROOT / "environment.yml").read_text()
    conda = requirement_names(text.split("dependencies:", 1)[1].splitlines())
    assert pip == conda
    assert pip["torch"] == "2.14.1" and pip["torchvision"] == "0.29.1"


def test_pyproject_declares_what_the_setup_installs():
    """`pip install .[notebooks,test]` and the two-command set-up install the same packages:
    every name in pyproject's dependencies and extras is in requirements.txt, and back."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    names = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0].lower() for d in declared}
    pip = requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    assert names == set(pip), (names ^ set(pip))
    runtime = {re.split(r"[<>=!~ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert {"torch", "torchvision", "numpy", "scipy", "pandas", "tqdm", "matplotlib", "seaborn"} <= runtime


def test_a_plain_install_ships_the_code_book_tables():
    """`pip install .` (not editable) must carry dambq/codebook_tables.json: without it the lookup
    code-book would be searched afresh on first use."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = setuptools.get("package-data", {}).get("dambq", [])
    assert "codebook_tables.json" in shipped and (ROOT / "dambq" / "codebook_tables.json").exists()
