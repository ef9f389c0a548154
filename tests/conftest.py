import os
import sys
from pathlib import Path

# Offline by construction: nothing in the test suite may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


import json  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

# The tiny reproductions the tests read, each run once per session into one shared folder (the paper tests check its
# run folder, the docs test builds the site from all of them). `make reproduce` runs every band in full; the tests
# shrink every band so that the suite stays well inside the CI budget.
TINY_OVERRIDES = {
    "dpo": {"n_prompts": 600, "n_eval": 120, "steps": 24, "betas": "[0.1, 0.3, 1.0]", "bon_ns": "[1, 2, 4, 8]",
            "ppo_kl_coefs": "[0.1]", "ppo_iterations": 4},
    "dlma": {"n_prompts": 300, "n_eval": 80, "steps": 16, "cd_steps": 16},
    "self_contrast": {"n_prompts": 64, "n_eval": 100, "steps": 10, "filters": '["all", "lastdedup-75"]'},
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """`tiny_run(paper)` -> the shared output folder, after `selfalign reproduce <paper> --scale tiny` ran into it: once
    per test run, also under `pytest -n N`, where the workers share the folder and the first to need a paper runs it
    while the others wait on its lock."""
    from filelock import FileLock
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"): base = base.parent  # the folder every worker's basetemp sits in
    out = base / "tiny_runs"; out.mkdir(exist_ok=True)

    def run(paper: str) -> Path:
        record = out / f".{paper}.json"
        with FileLock(str(out / f".{paper}.lock")):
            if not record.exists():
                args = [str(BIN / "selfalign"), "reproduce", paper, "--scale", "tiny", "--out", str(out)]
                for k, v in TINY_OVERRIDES[paper].items(): args += ["-p", k, str(v)]
                r = subprocess.run(args, capture_output=True, text=True)
                record.write_text(json.dumps({"returncode": r.returncode, "stderr": r.stderr[-3000:]}))
        r = json.loads(record.read_text())
        assert r["returncode"] == 0, f"reproduce {paper} failed:\n{r['stderr']}"
        return out
    return run


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs the suite on two workers (`pytest -n 2`): a test module's tests stay together on one worker (its
    module fixtures are built once), the notebooks spread one by one."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if nodeid.startswith("tests/test_notebooks.py") else nodeid.split("::", 1)[0]
    return ByModule(config, log)
