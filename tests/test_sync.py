"""Notebooks and library agree: nbdev-clean and nbdev-export leave no diff."""
import filecmp
import shutil
import subprocess

from conftest import BIN, ROOT


def _copy(tmp_path):
    dst = tmp_path / "repo"
    dst.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    for name in ("nbs", "selfalign"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    return dst


def _diff(a, b):
    out = []
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__", ".ipynb_checkpoints"])
    def walk(c, rel=""):
        out.extend(f"{rel}{n}" for n in c.diff_files + c.left_only + c.right_only)
        for n, sub in c.subdirs.items(): walk(sub, f"{rel}{n}/")
    walk(cmp)
    return out


def test_nbdev_clean_leaves_no_diff(tmp_path):
    repo = _copy(tmp_path)
    subprocess.run([str(BIN / "nbdev-clean")], cwd=repo, check=True, capture_output=True)
    assert _diff(ROOT / "nbs", repo / "nbs") == [], "run `make export` (nbdev-clean) and commit the notebooks"


def test_nbdev_export_leaves_no_diff(tmp_path):
    repo = _copy(tmp_path)
    subprocess.run([str(BIN / "nbdev-export")], cwd=repo, check=True, capture_output=True)
    assert _diff(ROOT / "selfalign", repo / "selfalign") == [], "run `make export` and commit selfalign/"
