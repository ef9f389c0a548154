"""Execute every notebook in nbs/ as a test (nbdev's runner, one subprocess per notebook for isolation).

Notebooks are found anew on each run in every layer folder (`nbs/<layer>/NN_name.ipynb`), so one added to any folder is
tested without editing this file; a test's id is the notebook's path under nbs/ (`core/00_base`)."""
import subprocess
import sys

import pytest

from conftest import ROOT

NBS = ROOT / "nbs"
NOTEBOOKS = sorted(p for p in NBS.glob("**/[0-9]*.ipynb")
                   if not any(part.startswith((".", "_")) for part in p.relative_to(NBS).parts))  # no checkpoints
IDS = [p.relative_to(NBS).with_suffix("").as_posix() for p in NOTEBOOKS]
RUNNER = "import sys; from nbdev.test import test_nb as run_nb; ok, _ = run_nb(sys.argv[1]); sys.exit(0 if ok else 1)"


def test_there_are_notebooks_in_the_layer_folders():
    assert len(NOTEBOOKS) >= 6, IDS
    folders = {i.split("/")[0] for i in IDS if "/" in i}
    assert {"core", "data", "objectives", "bands"} <= folders, folders  # the glob reaches into the layer folders


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_notebook_runs(nb):
    r = subprocess.run([sys.executable, "-c", RUNNER, str(nb)], cwd=nb.parent, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, f"{nb.relative_to(NBS)} failed:\n{r.stderr[-6000:]}\n{r.stdout[-2000:]}"
