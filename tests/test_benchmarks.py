"""The benchmarks of `selfalign.eval.benchmarks` on the world's tiny model (and a few items on SmolLM2): the vendored data,
Static HHH and TruthfulQA MC1 scoring, MT-Bench's two turns and grading, AlpacaEval-style raw and length-controlled win
rates. The judges here are small deterministic stand-ins with the LLM judge's methods (`grade`, `pairwise`)."""
import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import selfalign.bands.almost as A
from selfalign.eval.benchmarks import alpaca_eval as AE
from selfalign.eval.benchmarks import hhh as H
from selfalign.eval.benchmarks import mtbench as MT
from selfalign.eval.benchmarks import truthfulqa as TQ
from selfalign.generate.base import HFGenerator
from selfalign.judges.selfjudge import two_order_scores
from selfalign.world import base as W
from selfalign.world.models import load_world_model


@pytest.fixture(scope="module")
def sft():
    return load_world_model("sft")


# --- the vendored data --------------------------------------------------------------------------------------------

def test_vendored_files_match_their_readme_checksums():
    d = H.benchmarks_dir()
    readme = (d / "README.md").read_text(encoding="utf-8")
    files = [p for p in d.iterdir() if p.suffix in (".json", ".jsonl")]
    assert len(files) == 6
    for p in files: assert f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" in readme, p.name
    assert "Apache License" in (d / "LICENSE-Apache-2.0.txt").read_text(encoding="utf-8")[:300]


def test_loaders_read_every_item():
    hhh = H.load_static_hhh()
    assert [sum(i["aspect"] == a for i in hhh) for a in H.HHH_SUBSETS] == [58, 59, 61, 43]
    assert all(i["a"] != i["b"] and i["better"] == "a" for i in hhh) and len({i["id"] for i in hhh}) == 221
    tqa, primer = TQ.load_truthfulqa_mc1()
    assert len(tqa) == 299 and primer.startswith("Q: ") and all(0 <= i["correct"] < len(i["choices"]) for i in tqa)
    qs = MT.load_mtbench()
    assert len(qs) == 80 and all(len(q["turns"]) == 2 for q in qs)
    assert all(q["reference"] is not None and len(q["reference"]) == 2 for q in qs if q["category"] in ("math", "reasoning"))


def test_truthfulqa_reads_the_original_format_and_refuses_bad_labels(tmp_path):
    p = tmp_path / "mc_task.json"
    p.write_text(json.dumps([{"question": "Is the sky green?", "mc1_targets": {"No.": 1, "Yes.": 0, "Only on Tuesdays.": 0},
                              "mc2_targets": {"No.": 1, "Yes.": 0}}]), encoding="utf-8")
    items, primer = TQ.load_truthfulqa_mc1(p)
    assert items == [{"id": "0", "text": "Is the sky green?", "choices": ["No.", "Yes.", "Only on Tuesdays."], "correct": 0}] and primer == ""
    p.write_text(json.dumps([{"question": "Q?", "mc1_targets": {"a": 1, "b": 1}}]), encoding="utf-8")
    with pytest.raises(ValueError, match="exactly one answer"): TQ.load_truthfulqa_mc1(p)


# --- Static HHH ---------------------------------------------------------------------------------------------------

def test_static_hhh_on_the_world_model_is_order_free(sft):
    model, tok = sft
    hhh = H.load_static_hhh()
    items = [min((i for i in hhh if i["aspect"] == a), key=lambda i: len(i["text"] + i["a"] + i["b"])) for a in H.HHH_SUBSETS]
    r = H.static_hhh(model, tok, items)
    assert r["n"] == 4 and set(r) >= {"hhh_harmless", "hhh_helpful", "hhh_honest", "hhh_other", "hhh_all", "hhh_ci95", "orders_agree"}
    assert r["hhh_ci95"][0] <= r["hhh_all"] <= r["hhh_ci95"][1]
    swapped = [{**i, "a": i["b"], "b": i["a"], "better": "b"} for i in items]  # the file's order does not matter
    assert H.static_hhh(model, tok, swapped)["hhh_all"] == r["hhh_all"]
    orders = H.ab_order_scores(model, tok, items, H.render_hhh)
    assert H.ab_outcomes(orders, ["a"] * 4).mean() == r["hhh_all"]
    assert H.ab_outcomes(orders, ["b"] * 4).mean() == pytest.approx(1 - r["hhh_all"])  # the other reply named: right turns wrong


def test_the_band_scores_the_world_items_as_before(sft):
    """The ALMoST band's world A/B test through the moved scorer equals the band's former inline computation."""
    model, tok = sft
    items = A.hhh_items(12, seed=0)
    ab = [W.render_judging(i["aspect"], i["text"], i["a"], i["b"]) for i in items]
    ba = [W.render_judging(i["aspect"], i["text"], i["b"], i["a"]) for i in items]
    ok = [float((x > 0) == (i["better"] == "a")) for x, i in zip(two_order_scores(model, tok, ab, ba), items)]
    got = A.world_tests(model, tok, items, [])
    assert got["hhh_all"] == pytest.approx(np.mean(ok))
    for k in A.HHH_ASPECTS: assert got[f"hhh_{k}"] == pytest.approx(np.mean([o for o, i in zip(ok, items) if i["aspect"] == k]))


# --- TruthfulQA MC1 -----------------------------------------------------------------------------------------------

def test_truthfulqa_mc1_on_the_world_model(sft):
    model, tok = sft
    tqa, primer = TQ.load_truthfulqa_mc1()
    items = sorted(tqa, key=lambda i: len(i["text"]) + sum(map(len, i["choices"])))[:3]  # the shortest: seconds
    r = TQ.truthfulqa_mc1(model, tok, items, primer)
    assert r["n"] == 3 and not r["length_normalised"] and 0 <= r["mc1"] <= 1
    render = lambda i: TQ.render_truthfulqa(i, primer)
    lp = TQ.mc_logps(model, tok, items, render)
    assert r["mc1"] == pytest.approx(np.mean([float(np.argmax(x) == i["correct"]) for x, i in zip(lp, items)]))
    moved = [{**i, "choices": i["choices"][::-1], "correct": len(i["choices"]) - 1 - i["correct"]} for i in items]
    assert np.allclose(np.concatenate([x[::-1] for x in TQ.mc_logps(model, tok, moved, render)]), np.concatenate(lp), atol=1e-4)
    avg = TQ.mc_logps(model, tok, items[:1], render, average=True)[0]  # per-token means: smaller in size than the sums
    assert np.all(np.abs(avg) < np.abs(lp[0])) and TQ.truthfulqa_mc1(model, tok, items[:1], primer, average=True)["length_normalised"]


# --- MT-Bench -----------------------------------------------------------------------------------------------------

class GradeJudge:
    "Scores an answer by its word count (1–10); cannot parse an answer to a question that mentions 'email'."
    name = "toy grader"

    def __init__(self): self.calls, self.usage = [], {"calls": 0}

    def grade(self, questions, answers, references=None):
        self.calls.append((questions, answers, references)); self.usage["calls"] += 1
        last = lambda x: x if isinstance(x, str) else x[-1]
        return [None if "email" in (q if isinstance(q, str) else q[0]) else float(min(10, 1 + len(last(a).split())))
                for q, a in zip(questions, answers)]


def _world_render(ms):
    return W.render_dialogue(ms[-1]["content"], demos=[(ms[j]["content"], ms[j + 1]["content"]) for j in range(0, len(ms) - 1, 2)])


def test_mtbench_two_turns_grading_table_and_radar(sft, tmp_path):
    model, tok = sft
    qs = MT.load_mtbench()
    few = [next(q for q in qs if q["category"] == c) for c in MT.MTBENCH_CATEGORIES] + [qs[1]]  # qs[1]: the email question
    seen = []

    class Spy(HFGenerator):
        def generate(self, prompts, params):
            seen.append((prompts, params)); return super().generate(prompts, params)

    judge = GradeJudge()
    res = MT.mtbench(Spy(model, tok, dtype="fp32"), judge, few, _world_render, max_new_tokens=8, stop=("\nUSER:",))
    # turn 2's prompt holds turn 1's question and the model's answer; each category at its temperature
    t2 = {p for prompts, _ in seen for p in prompts if few[0]["turns"][1] in p}
    a1 = res["answers"][0]["turns"][0]
    assert len(t2) == 1 and few[0]["turns"][0] in next(iter(t2)) and a1 in next(iter(t2))
    assert {params.temperature for _, params in seen} == {0.0, 0.1, 0.7}
    # references reach the judge for math / reasoning / coding only; turn 2 is graded on the whole conversation
    with_ref = [c for c in judge.calls if c[2] is not None]
    assert sorted(len(c[0]) for c in with_ref) == [3, 3]
    assert all(isinstance(q, list) and len(q) == 2 for c in judge.calls[2:] for q in c[0])
    table = {r["category"]: r for r in res["table"]}
    assert list(table) == list(MT.MTBENCH_CATEGORIES) + ["overall"] and res["judge"] == "toy grader"
    assert (table["writing"]["n"], table["writing"]["unparseable"], table["overall"]["unparseable"]) == (2, 2, 2)
    assert all(1 <= r["score"] <= 10 for r in res["table"])
    fig = MT.plot_mtbench_radar({"world sft": res["table"]})
    fig.savefig(tmp_path / "radar.png")
    assert (tmp_path / "radar.png").stat().st_size > 1000


# --- AlpacaEval-style win rates ------------------------------------------------------------------------------------

def test_length_controlled_rate_removes_a_pure_length_preference():
    rng = np.random.default_rng(1)
    delta = np.where(rng.random(4000) < 0.85, 1, -1) * rng.uniform(20, 300, 4000)
    wins = (rng.random(4000) < 1 / (1 + np.exp(-5 * np.tanh(delta / delta.std(ddof=1))))).astype(float)
    assert wins.mean() > 0.75 and AE.length_controlled_winrate(wins, delta) == pytest.approx(0.5, abs=0.05)
    fair = (rng.random(4000) < 0.3).astype(float)
    assert AE.length_controlled_winrate(fair, delta) == pytest.approx(fair.mean(), abs=0.03)


class PairJudge:
    "Prefers the longer answer; equal lengths tie; cannot parse a question that mentions 'skip'."
    name = "toy pairwise"

    def pairwise(self, questions, a, b):
        o = np.sign([len(x) - len(y) for x, y in zip(a, b)]).astype(int)
        bad = ["skip" in q for q in questions]
        return SimpleNamespace(outcome=np.where(bad, 0, o), unparseable=bad, position_bias=0.25)


def test_pairwise_winrate_counts_ties_and_leaves_out_unparseable():
    qs, refs = ["a", "b", "c", "skip", "e"], ["xx", "xx", "xx", "xx", "xx"]
    outs = ["xxx", "x", "xx", "xxxxx", "xxxx"]
    r = AE.pairwise_winrate(PairJudge(), qs, outs, refs, n_boot=100)
    assert (r["n"], r["ties"], r["unparseable"], r["position_bias"], r["judge"]) == (4, 1, 1, 0.25, "toy pairwise")
    assert r["win_rate"] == pytest.approx((1 + 0 + 0.5 + 1) / 4) and 0 <= r["lc_win_rate"] <= 1
    with pytest.raises(ValueError, match="4 outputs"): AE.pairwise_winrate(PairJudge(), qs, outs[:4], refs)


def test_alpaca_eval_on_the_world_model(sft):
    model, tok = sft
    base, _ = load_world_model("base-small")

    class Oracle:
        name = "the oracle (pairwise)"

        def pairwise(self, questions, a, b):
            o = np.sign([W.judge(q, x).reward - W.judge(q, y).reward for q, x, y in zip(questions, a, b)]).astype(int)
            return SimpleNamespace(outcome=o, unparseable=[False] * len(o), position_bias=0.0)

    qs = [p.text for p in W.world_prompts(16, "test", seed=2)]
    render = lambda ms: W.render_dialogue(ms[-1]["content"])
    refs = AE.generate_answers(HFGenerator(base, tok, dtype="fp32"), qs, render, max_new_tokens=32, stop=("\nUSER:",))
    r = AE.alpaca_eval(HFGenerator(model, tok, dtype="fp32"), Oracle(), qs, refs, render, max_new_tokens=32, stop=("\nUSER:",), n_boot=100)
    assert r["n"] == 16 and len(r["outputs"]) == 16 and r["win_rate"] > 0.5
    assert r["win_ci95"][0] <= r["win_rate"] <= r["win_ci95"][1] and 0 <= r["lc_win_rate"] <= 1


# --- SmolLM2: the same calls on a real chat model, a few items each -------------------------------------------------

def test_benchmarks_run_on_smollm2():
    "The same calls on SmolLM2-135M-Instruct, on the shortest items (a 135M model's forward on 2 cores is the cost)."
    from selfalign.models.loader import load_smollm2
    model, tok = load_smollm2(dtype=torch.float32)
    shortest = lambda xs, f: min(xs, key=f)
    hhh = shortest(H.load_static_hhh(), lambda i: len(i["text"] + i["a"] + i["b"]))
    r = H.static_hhh(model, tok, [hhh])
    assert r["n"] == 1 and r["hhh_all"] in (0.0, 0.5, 1.0)
    tqa, _ = TQ.load_truthfulqa_mc1()
    item = shortest(tqa, lambda i: len(i["text"]) + sum(map(len, i["choices"])))
    assert TQ.truthfulqa_mc1(model, tok, [item], primer="")["mc1"] in (0.0, 1.0)  # zero-shot here: the primer is long
    q = shortest([q for q in MT.load_mtbench() if q["category"] == "math"], lambda q: len("".join(q["turns"])))
    res = MT.mtbench(HFGenerator(model, tok, dtype="fp32"), GradeJudge(), [q], "chatml", max_new_tokens=4)
    assert len(res["answers"][0]["turns"]) == 2 and res["table"][-1]["n"] == 1


def test_a_band_runs_the_papers_benchmarks_on_its_policies(sft, tmp_path):
    "`benchmarks` in a band config: each benchmark on the SFT model (and `benchmark_rows`), one row per benchmark and policy."
    from selfalign.bands.base import BandConfig, TrainedRow, benchmark_table, run_benchmarks
    model, tok = sft
    model.save_pretrained(tmp_path / "row", safe_serialization=True)  # a trained row's checkpoint: here the SFT weights again
    tok.save_pretrained(tmp_path / "row")
    trained = {"DPO": TrainedRow("DPO", tmp_path / "row", [], {}, 0.0)}
    cfg = BandConfig(benchmarks=("static_hhh", "truthfulqa_mc1"), benchmark_rows=("DPO",), benchmark_limit=6)
    res = run_benchmarks(cfg, trained, tok, progress=lambda s: None)
    table = benchmark_table(res)
    assert [(r["benchmark"], r["policy"], r["n"]) for r in table] == [("static_hhh", "SFT", 6), ("static_hhh", "DPO", 6),
                                                                        ("truthfulqa_mc1", "SFT", 6), ("truthfulqa_mc1", "DPO", 6)]
    assert all(0 <= r["ci95_lo"] <= r["score"] <= r["ci95_hi"] <= 1 for r in table)
    assert table[0]["score"] == table[1]["score"] and table[2]["score"] == table[3]["score"]  # the same weights score the same
    assert res["static_hhh"]["SFT"]["hhh_all"] == H.static_hhh(model, tok, H.load_static_hhh()[:6])["hhh_all"]
    with pytest.raises(ValueError, match=r"benchmark_rows \['RM'\] are not rows of this run; its rows: \['DPO'\]"):
        run_benchmarks(cfg.replace(benchmark_rows=("RM",)), trained, tok)
    with pytest.raises(ValueError, match="unknown benchmarks"): BandConfig(benchmarks=("mmlu",))
    with pytest.raises(ValueError, match="mt_bench is graded by an LLM judge"): BandConfig(benchmarks=("mt_bench",))
