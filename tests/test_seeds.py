"""Any seed runs, and several seeds pool: every band at a size far below `TINY_OVERRIDES`, over seeds 1 and 2 (neither
is the default 0, which the other tests use), each as `selfalign reproduce … -p seeds [1, 2]`."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import BIN

# (config, overrides): each band's main config shrunk to the least that still runs every stage and claim (two optimiser
# steps per trained row, 20 held-out prompts): each seed well under a minute.
SHRUNK = {
    "dpo": ("frontier", {"n_prompts": 120, "n_eval": 20, "steps": 2, "sft_steps": 2, "rm_steps": 2, "betas": "[0.3]", "beta": 0.3,
                         "table_betas": "[0.3]", "bon_ns": "[1, 2]", "ppo_kl_coefs": "[0.1]", "ppo_gold_kl": "", "ppo_iterations": 1,
                         "ppo_rollout_prompts": 8}),
    "dlma": ("main", {"n_prompts": 40, "n_eval": 20, "steps": 2, "cd_steps": 2}),
    "almost": ("main", {"n_prompts": 40, "n_eval": 20, "rm_steps": 2, "rmsp_queries": 12, "rmsp_n": 2, "bon_ns": "[1, 2]", "sft_steps": 2,
                        "ppo_iterations": 1, "ppo_rollout_prompts": 8, "n_hhh": 12, "n_mc": 12}),
    "self_contrast": ("main", {"n_prompts": 24, "n_eval": 20, "steps": 2, "ks": "[1, 4]", "filters": '["lastdedup-75"]'}),
    "salmon": ("main", {"n_prompts": 24, "pmp_prompts": 24, "n_rm_eval": 12, "rm_steps": 2, "ppo_iterations": 1, "ppo_rollout_prompts": 8,
                        "n_eval": 20}),
}


@pytest.mark.parametrize("paper", sorted(SHRUNK))
def test_band_runs_at_other_seeds_and_pools_them(paper, tmp_path):
    config, overrides = SHRUNK[paper]
    args = [str(BIN / "selfalign"), "reproduce", paper, "--scale", "tiny", "-c", config, "--out", str(tmp_path), "-p", "seeds", "[1, 2]"]
    for k, v in overrides.items(): args += ["-p", k, str(v)]
    r = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    assert r.returncode == 0, f"{paper} at seeds 1, 2 failed:\n{r.stderr[-3000:]}"
    run = tmp_path / paper / config
    m = json.loads((run / "metrics.json").read_text())
    assert m["seeds"] == [1, 2] and m["seed"] == 1
    assert {"seed-1", "seed-2"} <= {p.name for p in run.iterdir()}
    by_seed = {row["claim"]: row for row in m["tables"]["claims_by_seed"]}
    assert list(by_seed) == [c["id"] for c in m["claims"]]
    for c in m["claims"]:
        row = by_seed[c["id"]]
        assert {"seed 1", "seed 2", "pooled", "verdict"} <= set(row) and row["verdict"] == c["verdict"]
    # the pooled claims run over both seeds' outcomes: each seed's per-prompt lists laid end to end
    pooled, one, two = (json.loads((p / "results.json").read_text())["per_prompt"] for p in (run, run / "seed-1", run / "seed-2"))
    def lengths(o, n1, n2):
        if isinstance(o, dict): return all(lengths(o[k], n1[k], n2[k]) for k in o)
        return o is None or len(o) == len(n1) + len(n2)
    assert lengths(pooled, one, two)
    # the tables pool the seeds too: a number that differs between them is their mean, each seed's value beside it
    pooled_cells = [(r[k[:-len("_by_seed")]], v) for name, rows in m["tables"].items() if name != "claims_by_seed" and isinstance(rows, list)
                    for r in rows if isinstance(r, dict) for k, v in r.items() if k.endswith("_by_seed")]
    assert pooled_cells, f"{paper}: no table pooled over the seeds"
    for value, per_seed in pooled_cells:
        assert len(per_seed) == 2
        if value is not None: assert value == pytest.approx(sum(per_seed) / 2, abs=1e-4)
