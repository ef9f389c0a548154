"""ALMoST's synthetic comparisons: the exact public signature, and the rubric's invariants on random inputs."""
import inspect
import random

from selfalign.bands.almost import comparisons, rubric_ranks, synthetic_comparisons


def test_signature_is_the_one_other_code_calls():
    sig = inspect.signature(synthetic_comparisons)
    assert list(sig.parameters) == ["prompt", "responses", "rubric"]
    assert all(p.default is inspect.Parameter.empty for p in sig.parameters.values())


def test_pairs_follow_the_rubric_on_random_inputs():
    for seed in range(300): _check_random_case(random.Random(seed))


def _check_random_case(rng):
    names = [f"c{i}" for i in range(rng.randint(2, 6))]
    rubric, i = [], 0
    while i < len(names):  # some entries are ties
        k = rng.choice([1, 1, 2]); rubric.append(names[i] if k == 1 else names[i:i + k]); i += k
    responses = {n: rng.choice([None, "", " ", "x" * rng.randint(1, 120)]) for n in rng.sample(names, len(names))}
    ranks = rubric_ranks(rubric)
    for filt in (True, False):
        pairs = comparisons("Q", responses, rubric, length_filter=filt)
        chosen = [p.meta["chosen_config"] for p in pairs]
        assert len(chosen) == len(set(chosen)) and len({ranks[c] for c in chosen}) == len(chosen)  # one chosen per config and rank
        assert len(pairs) <= len(set(ranks.values())) - 1
        for p in pairs:
            c, r = p.meta["chosen_config"], p.meta["rejected_config"]
            assert ranks[c] < ranks[r] and p.chosen == responses[c] and p.rejected == responses[r] and p.chosen.strip()
    assert len(synthetic_comparisons("Q", responses, rubric)) <= len(comparisons("Q", responses, rubric, length_filter=False))


# --- the band: config, bad input, the tiny run -------------------------------------------------------------------
import ast  # noqa: E402
import json  # noqa: E402

import papermill as pm  # noqa: E402
import pytest  # noqa: E402

import selfalign.bands.almost as A  # noqa: E402
from conftest import ROOT  # noqa: E402
from selfalign.cli import plan  # noqa: E402
from selfalign.core.base import validate_metrics  # noqa: E402
from selfalign.data.records import DataError  # noqa: E402

CLAIMS = ["almost-synthetic-accuracy", "almost-filter-helps", "almost-rm-accuracy", "almost-rmsp-beats-sft", "almost-rlsf-beats-rmsp"]


def _defaults():
    return {k: ast.literal_eval(v["default"]) for k, v in pm.inspect_notebook(str(ROOT / "papers/almost/reproduce.ipynb")).items()}


def test_notebook_defaults_are_the_band_defaults():
    assert A.ALMoSTBandConfig.from_params(_defaults()) == A.ALMoSTBandConfig()


def test_configs_resolve_at_every_scale(tmp_path):
    for scale in ("tiny", "small", "paper"):
        (job,) = plan("almost", scale, tmp_path)
        cfg = A.ALMoSTBandConfig.from_params({**_defaults(), **job.parameters})
        assert cfg.best() in cfg.configurations()
    paper = A.ALMoSTBandConfig.from_params({**_defaults(), **plan("almost", "paper", tmp_path)[0].parameters})
    assert A.parse_rubric(paper.rubric) == ["llama-2-13b-hf-good-3shot", "llama-2-7b-hf-good-3shot", "llama-2-7b-hf-bad-3shot"]
    assert (paper.pg_rouge_max, paper.min_chars, paper.rm_lr) == (0.5, 50, 2e-5)


def test_rubric_strings_parse_with_ties_and_refuse_bad_names():
    assert A.parse_rubric("a > b, c > d") == ["a", ["b", "c"], "d"]
    for bad in ("", "a > > b", "a > a"):
        with pytest.raises(ValueError): A.parse_rubric(bad)
    with pytest.raises(ValueError, match="not in models"): A.ALMoSTBandConfig(rubric="big-good-3shot > base-small-good-1shot")
    with pytest.raises(ValueError, match="<model>-<good|bad>-<k>shot"): A.ALMoSTBandConfig(rubric="base-large > base-small-good-1shot")


def test_bad_input_files_are_refused_before_any_model_loads(tmp_path):
    q = tmp_path / "queries.txt"; q.write_text("How do I boil an egg?\nWhat is 2 plus 2?\n")
    rd = tmp_path / "rg"; rd.mkdir()
    cfg = dict(rubric="base-large-good-3shot > base-small-good-3shot", ablations={}, queries_file=str(q), responses_dir=str(rd))
    with pytest.raises(DataError, match=r"base-small-good-3shot\.json: no responses for configuration 'base-small-good-3shot'"):
        (rd / "base-large-good-3shot.json").write_text(json.dumps(["Boil it for nine minutes.", None]))
        A.ALMoSTBandConfig(**cfg)
    (rd / "base-small-good-3shot.json").write_text(json.dumps(["Four."]))
    with pytest.raises(DataError, match=r"base-small-good-3shot\.json: 1 responses for the 2 queries of .*queries\.txt"):
        A.ALMoSTBandConfig(**cfg)
    (rd / "base-small-good-3shot.json").write_text(json.dumps(["Four.", 4]))
    with pytest.raises(DataError, match="item 1 is int"): A.ALMoSTBandConfig(**cfg)
    (rd / "base-small-good-3shot.json").write_text(json.dumps(["Four.", None]))
    assert A.ALMoSTBandConfig(**cfg).configurations() == ["base-large-good-3shot", "base-small-good-3shot"]
    seeds = tmp_path / "seeds.txt"; seeds.write_text("### Instruction: write a query\n" + "".join(f"Query {i}?\n" for i in range(4)))
    with pytest.raises(DataError, match=r"seeds\.txt: 4 seed queries after the instruction line, fewer than pg_shots=10"):
        A.ALMoSTBandConfig(seeds_file=str(seeds))
    with pytest.raises(ValueError, match="rubric"): A.ALMoSTBandConfig(rubric=" ")


def test_the_world_tests_have_one_right_answer_each():
    items = A.mc_items(20, seed=0)
    assert len(items) == 20 and all(len(set(i["choices"])) == 4 for i in items)
    hhh = A.hhh_items(30, seed=0)
    assert {i["aspect"] for i in hhh} == set(A.HHH_ASPECTS) and all(i["a"] != i["b"] for i in hhh)


def test_reproduce_almost_tiny_writes_tables_figure_and_claims(tiny_run):
    out = tiny_run("almost") / "almost" / "main"  # shrunk (conftest.TINY_OVERRIDES); make reproduce runs it in full
    m = validate_metrics(json.loads((out / "metrics.json").read_text()))
    assert [c["id"] for c in m["claims"]] == CLAIMS and all(c["value"] is not None for c in m["claims"])
    t = m["tables"]
    assert [r["rubric"] for r in t["label_accuracy"]] == ["main", "size only", "shots only", "quality only", "main, no length filter"]
    assert [r["model"] for r in t["reward_models"]] == ["RM (synthetic)", "RM (gold labels)", "length heuristic"]
    assert [r["policy"] for r in t["policies"]] == ["SFT (demonstrations)", "prompted base (base-large-good-3shot)", "ALMoST-SFT", "ALMoST-PPO"]
    assert all(0 <= r["hhh_all"] <= 1 and 0 <= r["mc1"] <= 1 for r in t["policies"])
    assert [b["n"] for b in t["best_of_n"]] == [1, 2, 4]
    first = out / "seed-1"  # the first seed's folder (the tests run two): its data, rows and samples
    assert {"almost.png", "reproduce.ipynb"} <= {p.name for p in out.iterdir()}
    assert {"queries.txt", "comparisons.jsonl", "samples.jsonl"} <= {p.name for p in first.iterdir()}
    assert {p.name for p in (first / "responses").iterdir()} == {f"{c}.json" for c in A.ALMoSTBandConfig().configurations()}
    rmsp = [json.loads(l) for l in (first / "almost-sft" / "rmsp.jsonl").read_text().splitlines()]
    assert rmsp and all(r["response"].strip() for r in rmsp)
