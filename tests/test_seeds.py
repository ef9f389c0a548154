"""Any seed runs, and several seeds pool: the shared tiny runs (conftest: every band shrunk, over seeds 1 and 2 — neither
is the default 0, which the other tests use — each as `selfalign reproduce … -p seeds [1, 2]`)."""
import json

import pytest

from conftest import TINY_OVERRIDES, TINY_SEEDS

CONFIG = {"dpo": "frontier", "dlma": "main", "almost": "main", "self_contrast": "main", "salmon": "main"}


@pytest.mark.parametrize("paper", sorted(TINY_OVERRIDES))
def test_band_runs_at_other_seeds_and_pools_them(paper, tiny_run):
    assert TINY_SEEDS == (1, 2)
    run = tiny_run(paper) / paper / CONFIG[paper]
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
