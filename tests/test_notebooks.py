"""Execute every notebook in nbs/ as a test (nbdev's runner, one subprocess per notebook for isolation)."""
import subprocess
import sys

import pytest

from conftest import ROOT

NOTEBOOKS = sorted((ROOT / "nbs").glob("[0-9]*.ipynb"))
RUNNER = "import sys; from nbdev.test import test_nb as run_nb; ok, _ = run_nb(sys.argv[1]); sys.exit(0 if ok else 1)"


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 6, [n.name for n in NOTEBOOKS]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_notebook_runs(nb):
    r = subprocess.run([sys.executable, "-c", RUNNER, str(nb)], cwd=nb.parent, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, f"{nb.name} failed:\n{r.stderr[-6000:]}\n{r.stdout[-2000:]}"
