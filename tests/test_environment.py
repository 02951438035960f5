"""environment.yml (conda) and requirements.txt (pip) list the same packages and pins."""
import re
from pathlib import Path

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


def test_required_packages_present():
    pip = requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    for name in ("torch", "torchvision", "jupyterlab", "matplotlib", "seaborn", "ipywidgets",
                 "papermill", "nbval", "pytest", "tqdm", "numpy", "scipy", "pandas"):
        assert name in pip, name
