"""The Self-Contrast band: prompts whose samples are all empty or identical are skipped and counted (never a crash), the
hh-rlhf adapters read the hub's schema, configs resolve at every scale, and `selfalign reproduce self_contrast --scale
tiny` writes the figure, the filter table and the claims."""
import ast
import json
import subprocess

import papermill as pm
import pytest

import selfalign.bands.self_contrast as S
from selfalign.bands.base import run_band
from conftest import BIN, ROOT
from selfalign.cli import plan
from selfalign.core.base import validate_metrics
from selfalign.data.records import DataError
from selfalign.generate.base import Generation, HFGenerator
from selfalign.world.models import load_world_model

FIXTURES = ROOT / "tests" / "fixtures"
CLAIMS = ["sc-more-negatives-help", "sc-beats-dpo-std", "sc-beats-sft", "sc-filter-helps"]


def _fixed(prompt, text, n):
    return Generation(prompt, [text] * n, [[0]] * n, None, ["eos"] * n)


class Degenerate:
    "A generator whose samples are all empty for every third prompt and all identical for the next; real otherwise."
    name = "degenerate"

    def __init__(self, model, tok):
        self.inner = HFGenerator(model, tok, batch_size=64, dtype="fp32")
        self.fingerprint = "degenerate/" + self.inner.fingerprint

    def generate(self, prompts, params):
        real = self.inner.generate(list(prompts), params)
        out = []
        for i, g in enumerate(real):
            if i % 3 == 0: out.append(_fixed(g.prompt, "", params.n))
            elif i % 3 == 1: out.append(_fixed(g.prompt, "same answer", params.n))
            else: out.append(g)
        return out

    def __getattr__(self, k): return getattr(self.inner, k)


def test_prompts_with_empty_or_identical_samples_are_skipped_and_counted(tmp_path):
    model, tok = load_world_model("sft")
    cfg = S.SelfContrastConfig(n_prompts=12, n_samples=6, n_eval=6, ks=(1, 2), filters=("all", "lastdedup-75"), ablation_k=2,
                               steps=1, max_new_tokens=16, baselines=("SFT",))
    res = run_band(S.SelfContrastBand(generator=Degenerate(model, tok)), cfg, tmp_path, progress=lambda s: None)
    c = res["counts"]
    assert c["SC k=1"]["skipped"] == 8 and c["SC k=1"]["groups"] == 4  # 4 empty + 4 identical prompts of 12
    assert c["SC all k=2"]["skipped"] == 4  # `all` keeps duplicates: only the all-empty prompts are skipped
    assert res["diversity"]["empty_share"] == pytest.approx(1 / 3)


def test_all_prompts_skipped_is_a_clear_error(tmp_path):
    model, tok = load_world_model("sft")
    class Empty(Degenerate):
        def generate(self, prompts, params):
            return [_fixed(p, "", params.n) for p in prompts]
    cfg = S.SelfContrastConfig(n_prompts=4, n_samples=4, n_eval=4, ks=(1,), filters=(), ablation_k=1, steps=1, baselines=("SFT",))
    with pytest.raises(DataError, match=r"no training groups for \['SC k=1'\].*'skipped': 4"):
        run_band(S.SelfContrastBand(generator=Empty(model, tok)), cfg, tmp_path, progress=lambda s: None)
    assert (tmp_path / "samples" / "manifest.json").exists()  # the finished samples are kept for the re-run


def test_hh_rlhf_targets_and_pairs_from_the_fixture():
    cfg = S.SelfContrastConfig(prompts="hh-rlhf", template="zephyr", judge="proxy", pairs_files=str(FIXTURES / "hh_rlhf.jsonl"))
    train = S.sc_dataset(cfg, None, 10, "train")
    assert train and all(e.prompt.context.startswith("<|system|>\n</s>\n<|user|>\n") for e in train)  # no pirate system
    assert train[0].target == "Give it a sunny window and water it when the top of the soil is dry."
    gs, counts = S.dpo_std_groups(cfg, train)
    assert counts["groups"] == len(gs) == len(train) and gs[0].chosen == train[0].target and len(gs[0].rejected) == 1
    test = S.sc_dataset(cfg, None, 10, "test")
    assert all("<|user|>" in e.prompt.context and e.prompt.context.count("<|user|>") == 1 for e in test)  # first turn only


def test_nectar_targets_pairs_and_errors_from_the_fixture():
    cfg = S.SelfContrastConfig(prompts="nectar", template="openchat", judge="proxy", n_prompts=2, pairs_files=str(FIXTURES / "nectar.jsonl"))
    train = S.sc_dataset(cfg, None, 2, "train")
    assert [e.target for e in train] == ["Give it a sunny window and water it when the soil is dry.", "11 is prime."]
    assert train[0].rejected == "I don't know."  # the worst-ranked answer
    assert train[1].prompt.context == ("GPT4 Correct User: Name a prime number.<|end_of_turn|>GPT4 Correct Assistant: 7.<|end_of_turn|>"
                                       "GPT4 Correct User: Another one?<|end_of_turn|>GPT4 Correct Assistant:")
    test = S.sc_dataset(cfg, None, 5, "test")  # rows after the first n_prompts, one answer rows skipped, first turns only
    assert [e.prompt.text for e in test] == ["How many legs does a spider have?"]
    gs, counts = S.dpo_std_groups(cfg, train)
    assert counts["groups"] == 2 and gs[1].chosen == " 11 is prime." and gs[1].rejected == (" 9.",)
    bad = cfg.replace(pairs_files=str(FIXTURES / "nectar_malformed.jsonl"))
    with pytest.raises(DataError, match=r"nectar_malformed.jsonl.*2.*answers\[0\]"):
        S.sc_dataset(bad, None, 5, "train")


def test_ultrachat_targets_and_errors_from_the_fixture():
    cfg = S.SelfContrastConfig(prompts="ultrachat", template="zephyr", judge="proxy", baselines=("SFT", "SPIN"),
                               pairs_files=str(FIXTURES / "ultrachat.jsonl"))
    train = S.sc_dataset(cfg, None, 5, "train")
    assert [e.target for e in train] == ["It adds a smaller pull.", "Soft rain on the roof / ..."]  # the unanswered row skipped
    assert train[0].prompt.context.endswith("<|user|>\nAnd the sun?</s>\n<|assistant|>\n") and "The moon's gravity" in train[0].prompt.context
    assert S.sc_dataset(cfg, None, 5, "test")[0].target == "The moon's gravity pulls the oceans."  # first turn only
    with pytest.raises(ValueError, match="no preference pairs"):
        S.SelfContrastConfig(prompts="ultrachat", judge="proxy")
    with pytest.raises(DataError, match=r"ultrachat_malformed.jsonl.*2.*messages\[0\]"):
        S.sc_dataset(cfg.replace(pairs_files=str(FIXTURES / "ultrachat_malformed.jsonl")), None, 5, "train")


def _defaults():
    return {k: ast.literal_eval(v["default"]) for k, v in pm.inspect_notebook(str(ROOT / "papers/self_contrast/reproduce.ipynb")).items()}


def test_notebook_defaults_are_the_band_defaults():
    assert S.SelfContrastConfig.from_params(_defaults()) == S.SelfContrastConfig()


def test_configs_resolve_at_every_scale(tmp_path):
    for scale in ("tiny", "small", "paper"):
        (job,) = plan("self_contrast", scale, tmp_path)
        S.SelfContrastConfig.from_params({**_defaults(), **job.parameters})
    (paper,) = plan("self_contrast", "paper", tmp_path)
    p = {**_defaults(), **paper.parameters}
    assert (p["beta"], p["lr"], p["batch_size"] * p["grad_accum"], p["n_samples"], p["filter"], p["template"]) == \
        (0.1, 5e-7, 128, 32, "lastdedup-75", "zephyr")
    for overlay in sorted((ROOT / "papers/self_contrast/overlays").glob("*.yaml")):
        (job,) = plan("self_contrast", "paper", tmp_path, files=[overlay])
        cfg = S.SelfContrastConfig.from_params({**_defaults(), **job.parameters})
        assert cfg.batch_size * cfg.grad_accum == 128, overlay.name  # the paper's prompts per step


def test_reproduce_self_contrast_tiny(tiny_run):
    # the tiny band shrunk (conftest.TINY_OVERRIDES; make reproduce runs it in full): every row, table, figure and claim
    run = tiny_run("self_contrast") / "self_contrast" / "main"
    m = validate_metrics(json.loads((run / "metrics.json").read_text()))
    assert [c["id"] for c in m["claims"]] == CLAIMS and all(c["value"] is not None for c in m["claims"])
    assert [x["method"] for x in m["tables"]["figure"]] == ["SFT", "DPO_std", "SPIN", "SC k=1", "SC k=4"]  # the tests' cut of ks
    assert [x["filter"] for x in m["tables"]["filters"]] == ["all", "lastdedup-75"]  # the ablation's ends (the tests' cut)
    assert all(0 <= x["win_vs_target"] <= 1 for x in m["tables"]["figure"])
    assert {"self_contrast.png", "results.json", "reproduce.ipynb"} <= {p.name for p in run.iterdir()}
    assert "samples.jsonl" in {p.name for p in (run / "seed-1").iterdir()}  # the first seed's (the tests run two)


def test_reproduce_self_contrast_small_smoke(tmp_path):
    "SmolLM2-135M + LoRA on the world's requests, MiniLM negatives, judged by the named proxy: runs end to end on a CPU."
    # two trained rows of one step at half the batch, fewer prompts and fewer, shorter samples: the config as it is
    # costs ~6 min of CI (this cut: 94 s here, against 128 s at 8 prompts, 4 held out, 4 samples of 16 tokens)
    cut = ["-p", "ks", "[2]", "-p", "filters", "[]", "-p", "baselines", "[SFT, DPO_std]", "-p", "batch_size", "2", "-p", "n_eval", "2",
           "-p", "steps", "1", "-p", "n_prompts", "4", "-p", "n_samples", "3", "-p", "max_new_tokens", "12"]
    r = subprocess.run([str(BIN / "selfalign"), "reproduce", "self_contrast", "--scale", "small", "--out", str(tmp_path), *cut],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    m = validate_metrics(json.loads((tmp_path / "self_contrast" / "main" / "metrics.json").read_text()))
    assert [x["method"] for x in m["tables"]["figure"]] == ["SFT", "DPO_std", "SC k=2"]
    assert all(x["kl"] != 0 for x in m["tables"]["figure"][1:])  # every trained row moved off the SFT model
    assert m["claims"] and all("by the refusal-and-topicality proxy" in c["statement"] for c in m["claims"])
