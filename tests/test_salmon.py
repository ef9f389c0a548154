"""SALMON: the config and its bad input (refused before any model loads, naming the file and the item), the vendored
principles and templates, aggregation's invariants on random inputs, and the shrunk tiny run's tables, figure and claims."""
import ast
import json
import subprocess

import numpy as np
import papermill as pm
import pytest

import selfalign.bands.salmon as S
from conftest import BIN, ROOT
from selfalign.cli import plan
from selfalign.core.base import validate_metrics
from selfalign.data.records import DataError

CLAIMS = ["salmon-synthetic-accuracy", "salmon-rm-follows-principles", "salmon-ppo-beats-sft", "salmon-steering", "salmon-hacking-guard"]


def _defaults():
    return {k: ast.literal_eval(v["default"]) for k, v in pm.inspect_notebook(str(ROOT / "papers/salmon/reproduce.ipynb")).items()}


def test_notebook_defaults_are_the_band_defaults():
    assert S.SALMONBandConfig.from_params(_defaults()) == S.SALMONBandConfig()


def test_configs_resolve_at_every_scale(tmp_path):
    cfgs = {s: S.SALMONBandConfig.from_params({**_defaults(), **plan("salmon", s, tmp_path)[0].parameters}) for s in ("tiny", "small", "paper")}
    for cfg in cfgs.values():
        jt, rt = cfg.templates()
        assert all(k in cfg.principles() for k in (*cfg.judge_principles, *cfg.interventions, cfg.steer_principle))
        assert "{response}" in rt and "{a}" in jt and cfg.rl_pool()
    assert cfgs["small"].template == "chatml" and cfgs["paper"].template == "text"
    paper = cfgs["paper"]
    assert (paper.ppo_kl_coef, paper.stop_penalty, paper.length_bonus, paper.rl_principles, paper.max_principles) == (0.01, -6.0, 5.0, 3, 8)


def _write(path, items):
    path.write_text(json.dumps(items)); return str(path)


GOOD = {"name": "kind", "definition": "Be kind.", "negation": "Be unkind.", "weight": 1}


@pytest.mark.parametrize("items, message", [
    ([{"name": "kind", "definition": "Be kind."}], r"principle \[0\] 'kind': missing or empty 'negation'"),
    ([{"name": "kind", "negation": "Be unkind."}], r"principle \[0\] 'kind': missing or empty 'definition'"),
    ([GOOD, {**GOOD}], r"principle \[1\] 'kind': duplicate principle name 'kind'"),
    ([{**GOOD, "weight": 0}], r"principle \[0\] 'kind': weight must be a number > 0, got 0"),
    ([{**GOOD, "weight": -2.5}], r"weight must be a number > 0, got -2.5"),
    ([{**GOOD, "weigth": 2}], r"unknown field\(s\) \['weigth'\]"),
    ({"kind": "Be kind."}, "expected a non-empty list of principles"),
])
def test_bad_principles_files_name_the_file_and_the_item(tmp_path, items, message):
    f = _write(tmp_path / "principles.json", items)
    with pytest.raises(DataError, match=message) as e:
        S.SALMONBandConfig(template="chatml", prompts="offline", judge="proxy", principles_file=f, weights={})
    assert str(tmp_path / "principles.json") in str(e.value)


def test_bad_templates_and_names_are_refused(tmp_path):
    t = tmp_path / "reward.txt"; t.write_text("{principles}\n{response}")
    with pytest.raises(DataError, match=r"reward\.txt: the reward template lacks the placeholder\(s\) \{prompt\}"):
        S.SALMONBandConfig(reward_template_file=str(t))
    j = tmp_path / "judge.txt"; j.write_text("{principle} {prompt} {a}")
    with pytest.raises(DataError, match=r"judge\.txt: the judge template lacks the placeholder\(s\) \{b\}"):
        S.SALMONBandConfig(judge_template_file=str(j))
    with pytest.raises(DataError, match=r"interventions: \['brief'\] not defined"): S.SALMONBandConfig(interventions=("direct", "brief"))
    with pytest.raises(DataError, match="steer_principle: 'kindness' not defined"): S.SALMONBandConfig(steer_principle="kindness")
    with pytest.raises(ValueError, match="no principle is left to sample"):
        S.SALMONBandConfig(interventions=tuple(k for k in S.world_principles() if k != "harmless"))


def test_cli_refuses_a_bad_principles_file_before_any_model_loads(tmp_path):
    f = _write(tmp_path / "p.json", [GOOD, GOOD])
    r = subprocess.run([str(BIN / "selfalign"), "reproduce", "salmon", "--scale", "tiny", "--out", str(tmp_path / "runs"),
                        "-p", "principles_file", f, "-p", "template", "text", "-p", "weights", "{}"], capture_output=True, text=True)
    assert r.returncode != 0
    assert f"{f}: principle [1] 'kind': duplicate principle name 'kind'" in r.stdout + r.stderr
    assert not list((tmp_path / "runs").rglob("band_config.json"))  # the band never started


def test_aggregation_invariants_on_random_inputs():
    rng = np.random.default_rng(0)
    for seed in range(30):
        P, K = int(rng.integers(1, 12)), int(rng.integers(1, 9))
        o = rng.normal(size=(P, K, 2)) * rng.choice([0.1, 1, 10], size=(1, K, 1))
        pairs = [(rng.choice(["As an AI language model, hi.", "hi"]), "hello") for _ in range(P)]
        rows, c = S.aggregate(o, [f"p{k}" for k in range(K)], pairs, seed=seed, passes=3, noise=0.0, rule_noise=0.0,
                              rule_phrases=["As an AI language model"])
        assert c["rows"] + c["no_signal"] == 3 * P and c["rows"] == len(rows)
        agree = np.sign(o[..., 0]) == np.sign(o[..., 1])
        for r in rows:
            assert 1 <= len(r["principles"]) <= min(8, K) and len(set(r["principles"])) == len(r["principles"])
            if r["rule"]: assert r["label"] == (-1 if "As an AI" in pairs[r["pair"]][0] else 1); continue
            k = int(r["dominant"][1:]); neg = r["negated"][r["principles"].index(r["dominant"])]
            assert agree[r["pair"], k] and r["label"] == np.sign(o[r["pair"], k].mean()) * (-1 if neg else 1)
        # a principle with no agreeing pair never decides a row
        assert all(agree[r["pair"], int(r["dominant"][1:])] for r in rows if not r["rule"])


def test_vendored_principles_are_our_own_and_complete():
    ps = S.load_principles(S.asset("principles.json"))
    assert len(ps) == 10 and all(p.definition != p.negation and p.weight > 0 for p in ps.values())
    for kind in ("chatml", "text"):
        for which in ("judge", "reward"): S.load_template(S.asset(f"{which}_{kind}.txt"), which)


def test_reproduce_salmon_tiny_writes_tables_figure_and_claims(tiny_run):
    out = tiny_run("salmon") / "salmon" / "main"  # shrunk (conftest.TINY_OVERRIDES); make reproduce runs it in full
    first = out / "seed-1"  # the first seed's folder (the tests run two): its data, rows and samples
    m = validate_metrics(json.loads((out / "metrics.json").read_text()))
    assert [c["id"] for c in m["claims"]] == CLAIMS and all(c["value"] is not None and c["ci95"] for c in m["claims"])
    t = m["tables"]
    assert [r["policy"] for r in t["policies"]] == ["SFT", *S.PPO_ROWS]
    assert [r["model"] for r in t["reward_models"]] == ["RM (PMP)", "RM (principles)", "RM (PMP + principles)"]
    assert [r["principle"] for r in t["principles"]] == [*S.SALMONBandConfig().judge_principles, "all"]
    assert {r["policy"] for r in t["ppo_curves"]} == set(S.PPO_ROWS)
    assert all(0 <= r["forbidden"] <= 1 for r in t["policies"])
    assert {"salmon.png", "reproduce.ipynb"} <= {p.name for p in out.iterdir()}
    assert {"judgements.jsonl", "principle_pairs.jsonl", "samples.jsonl"} <= {p.name for p in first.iterdir()}
    rows = [json.loads(line) for line in (first / "principle_pairs.jsonl").read_text().splitlines()]
    assert rows and all(r["prompt"].startswith("SYSTEM: ") and r["chosen"] != r["rejected"] for r in rows)
    assert m["counts"]["aggregation"]["rows"] == len(rows)
