import os
import sys
from pathlib import Path

# Offline by construction: nothing in the test suite may reach a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


import subprocess  # noqa: E402

import pytest  # noqa: E402

# The tiny reproductions the tests read, each run once per session into one shared folder (the paper tests check its
# run folder, the docs test builds the site from all of them). `make reproduce` runs every band in full; the tests
# shrink every band so that the suite stays well inside the CI budget.
TINY_OVERRIDES = {
    "dpo": {"n_prompts": 600, "n_eval": 120, "steps": 24, "betas": "[0.1, 0.3, 1.0]", "bon_ns": "[1, 2, 4, 8]",
            "ppo_kl_coefs": "[0.1]", "ppo_iterations": 2, "ppo_rollout_prompts": 16},
    "dlma": {"n_prompts": 300, "n_eval": 80, "steps": 16, "cd_steps": 16},
    "almost": {"n_prompts": 80, "n_eval": 60, "rm_steps": 16, "rmsp_queries": 40, "rmsp_n": 4, "bon_ns": "[1, 2, 4]", "sft_steps": 12,
               "ppo_iterations": 2, "ppo_rollout_prompts": 16, "n_hhh": 60, "n_mc": 40},
    "salmon": {"n_prompts": 120, "pmp_prompts": 120, "n_rm_eval": 60, "rm_steps": 16, "ppo_iterations": 2, "ppo_rollout_prompts": 16,
               "n_eval": 60},
    "self_contrast": {"n_prompts": 64, "n_eval": 100, "steps": 10, "filters": '["all", "lastdedup-75"]'},
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    "`tiny_run(paper)` -> the shared output folder, after `selfalign reproduce <paper> --scale tiny` ran into it."
    out, done = tmp_path_factory.mktemp("tiny_runs"), {}

    def run(paper: str) -> Path:
        if paper not in done:
            args = [str(BIN / "selfalign"), "reproduce", paper, "--scale", "tiny", "--out", str(out)]
            for k, v in TINY_OVERRIDES[paper].items(): args += ["-p", k, str(v)]
            done[paper] = subprocess.run(args, capture_output=True, text=True)
        r = done[paper]
        assert r.returncode == 0, f"reproduce {paper} failed:\n{r.stderr[-3000:]}"
        return out
    return run
