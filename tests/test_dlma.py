"""The DLMA band: self-reward scoring fails clearly on bad values, its inputs are validated, its configs resolve at
every scale, and `selfalign reproduce dlma --scale tiny` writes both configs' run folders with the claims."""
import ast
import json
import math
import subprocess

import numpy as np
import papermill as pm
import pytest
import torch

import selfalign.bands.dlma as D
import selfalign.judges.selfreward as selfreward
from conftest import BIN, ROOT
from selfalign.cli import plan
from selfalign.core.base import validate_metrics
from selfalign.data.records import DataError, PreferencePair
from selfalign.world.models import load_world_model
from selfalign.world import base as W

FIXTURES = ROOT / "tests" / "fixtures"
CLAIMS = ["dlma-selfreward-beats-rlaif", "dlma-beats-sft", "dlma-beats-rlcd", "dlma-matches-rlhf"]


def _rows(n=4):
    out = []
    for p in W.world_prompts(n, "train", seed=3):
        c = D.CONTRASTS[D.contrast_for(p.kind)]
        out.append({"text": p.text, "kind": p.kind, "contrast": c.name, "context": W.render_dialogue(p.text),
                    "pos_context": W.render_dialogue(p.text, affix=c.positive),
                    "neg_context": W.render_dialogue(p.text, affix=c.negative), "chosen": " fine", "rejected": " no"})
    return out


def test_non_finite_margin_is_caught_with_the_row(monkeypatch):
    model, tok = load_world_model("sft")
    calls = iter(range(4))
    def fake(model, tok, prompts, completions, **kw):
        i = next(calls)
        v = torch.zeros(len(prompts), dtype=torch.float64)
        if i == 0: v[2] = float("inf")
        if i == 1: v[2] = float("inf")  # inf − inf = nan in row 2
        return v
    monkeypatch.setattr(selfreward, "completion_logps", fake)
    with pytest.raises(DataError, match=r"rows \[2\]: the self-reward margin is not finite"):
        D.self_reward_margins(model, tok, _rows())


def test_empty_response_is_caught_with_the_row():
    model, tok = load_world_model("sft")
    rows = _rows()
    rows[1]["chosen"] = "   "
    with pytest.raises(DataError, match="row 1: empty chosen response"):
        D.self_reward_margins(model, tok, rows)


def test_a_pair_with_a_non_finite_margin_is_refused():
    with pytest.raises(DataError, match="margin"):
        PreferencePair("USER: hi\nASSISTANT:", " a", " b", margin=float("nan"))


def _defaults():
    return {k: ast.literal_eval(v["default"]) for k, v in pm.inspect_notebook(str(ROOT / "papers/dlma/reproduce.ipynb")).items()}


def test_notebook_defaults_are_the_band_defaults():
    assert D.DLMABandConfig.from_params(_defaults()) == D.DLMABandConfig()


def test_configs_resolve_at_every_scale(tmp_path):
    for scale in ("tiny", "small", "paper"):
        jobs = plan("dlma", scale, tmp_path)
        assert sorted(j.config for j in jobs) == ["ablations", "main"]
        for job in jobs:
            D.DLMABandConfig.from_params({**_defaults(), **job.parameters})
    (paper,) = plan("dlma", "paper", tmp_path, configs=["main"])
    p = paper.parameters
    assert (p["optim"], p["lr"], p["beta"] if "beta" in p else 0.1, p["batch_size"] * p["grad_accum"]) == ("rmsprop", 5e-7, 0.1, 64)


def test_pku_saferlhf_prompts_from_the_fixture():
    _, tok = load_world_model("sft")
    cfg = D.DLMABandConfig(prompts="pku-saferlhf", template="safe_rlhf", judge="proxy", pairs_files=str(FIXTURES / "pku_saferlhf.jsonl"))
    ps = D.dlma_prompts(cfg, tok, 3, "train")
    assert ps and all(p.context.startswith("BEGINNING OF CONVERSATION: USER: ") and p.context.endswith("ASSISTANT:") for p in ps)
    assert D.render_affixed("safe_rlhf", ps[0].text, "kind").endswith("ASSISTANT (kind):")


def test_reproduce_dlma_tiny_writes_both_configs(tiny_run):
    tmp_path = tiny_run("dlma")  # shrunk (conftest.TINY_OVERRIDES); make reproduce runs it in full
    main = validate_metrics(json.loads((tmp_path / "dlma" / "main" / "metrics.json").read_text()))
    assert [c["id"] for c in main["claims"]] == CLAIMS and all(c["value"] is not None for c in main["claims"])
    assert [r["method"] for r in main["tables"]["main"]] == ["SFT", "CD", "RLCD", "RLAIF", "RLHF", "DLMA"]
    assert {r["labeller"] for r in main["tables"]["label_accuracy"]} == {"self-reward (DLMA)", "RLAIF judge", "RLCD polarity"}
    assert {"dlma.png", "reproduce.ipynb"} <= {p.name for p in (tmp_path / "dlma" / "main").iterdir()}
    assert {"pairs.jsonl", "samples.jsonl"} <= {p.name for p in (tmp_path / "dlma" / "main" / "seed-1").iterdir()}  # the first seed's
    abl = validate_metrics(json.loads((tmp_path / "dlma" / "ablations" / "metrics.json").read_text()))
    assert [r["method"] for r in abl["tables"]["ablations"]] == ["DLMA", "DLMA w=0", "DLMA w=0.4", "DLMA ±20"]  # w = 0.1 at larger scales
    assert [c["id"] for c in abl["claims"]] == ["dlma-selfreward-beats-rlaif", "dlma-beats-sft"]
