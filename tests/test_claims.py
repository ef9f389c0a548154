"Every claim of every tiny reproduction carries an interval and the verdict that interval gives (the shared tiny runs)."
import json

import pytest

from selfalign.core.base import verdict

PAPERS = ["dpo", "dlma", "almost", "self_contrast", "salmon"]


@pytest.mark.parametrize("paper", PAPERS)
def test_every_claim_has_an_interval_and_its_verdict(tiny_run, paper):
    runs = sorted((tiny_run(paper) / paper).glob("*/metrics.json"))
    assert runs, f"no metrics.json under {paper}"
    for path in runs:
        m = json.loads(path.read_text())
        assert m["claims"], path
        for c in m["claims"]:
            if c["value"] is None: assert c["verdict"] == "inconclusive", c; continue
            assert c["ci95"] is not None, f"{path}: {c['id']} has no interval"
            assert c["ci95"][0] <= c["ci95"][1], c
            assert c["verdict"] == verdict(c["value"], c["ci95"], c["threshold"], c["higher"], c["inclusive"]), c
            assert c["holds"] == (c["verdict"] == "holds"), c
