"""`-p judge llm` switches a band to an LLM judge: a shrunk tiny DPO run as `selfalign reproduce`, judged over HTTP by
a local OpenAI-compatible server (`test_llm_judge.Fake`, grading by the answer's length), names the judge in its win-rate
claims, counts the judge's calls and tokens in metrics.json, writes the key nowhere, and a re-run makes no calls."""
import json
import os
import re
import subprocess

import pytest

from conftest import BIN, ROOT
from selfalign.bands.base import DATA_CACHE, BandConfig, make_judge
from selfalign.eval.benchmarks.mtbench import load_mtbench
from selfalign.judges.llm import LLMJudge, LLMJudgeError
from test_llm_judge import MODEL, Fake

# the DPO band shrunk to the least that runs every stage (one seed, two optimiser steps a row, 20 held-out prompts, one β)
SHRUNK = {"dpo": ("frontier", {"seed": 0, "n_prompts": 120, "n_eval": 20, "steps": 2, "sft_steps": 2, "rm_steps": 2, "betas": "[0.3]", "beta": 0.3,
                               "table_betas": "[0.3]", "bon_ns": "[1, 2]", "ppo_kl_coefs": "[0.1]", "ppo_gold_kl": "", "ppo_iterations": 1,
                               "ppo_rollout_prompts": 8})}

KEY = "sk-band-SECRET-9876543210"


def length_grade(messages):
    "Grades 1–10 by the last answer's length in words: a judge whose verdicts differ between policies."
    user = messages[-1]["content"]
    last = user.rsplit("### Assistant:", 1)[-1] if "### Assistant:" in user else user.split("[Assistant's reply]")[-1]
    return f"Rating: [[{min(10, 1 + len(last.split()) // 4)}]]"


@pytest.fixture
def server():
    f = Fake(); f.reply = length_grade
    yield f
    f.httpd.shutdown(); f.httpd.server_close()


def reproduce(out, server, cache):
    "The shrunk DPO run judged by the server: the oracle labels its pairs; MT-Bench (two questions) on SFT and DPO."
    config, overrides = SHRUNK["dpo"]
    args = [str(BIN / "selfalign"), "reproduce", "dpo", "--scale", "tiny", "-c", config, "--out", str(out),
            "-p", "judge", "llm", "-p", "judge_model", MODEL, "-p", "judge_base_url", server.url,
            "-p", "judge_api_key_env", "BAND_JUDGE_KEY", "-p", "judge_cache", str(cache), "-p", "labeller", "oracle",
            "-p", "benchmarks", "[mt_bench]", "-p", "benchmark_limit", "2", "-p", "benchmark_rows", "[DPO β=0.3]"]
    for k, v in {**overrides, "ppo_kl_coefs": "[]"}.items(): args += ["-p", k, str(v)]
    r = subprocess.run(args, capture_output=True, text=True,
                       env={**os.environ, "BAND_JUDGE_KEY": KEY, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "dpo" / config / "metrics.json").read_text()), r


def test_dpo_band_judged_by_an_llm_over_http(server, tmp_path):
    cache = tmp_path / "cache"
    m, r = reproduce(tmp_path / "a", server, cache)
    calls = len(server.requests)
    assert calls > 0 and all(b["model"] == MODEL for b in server.requests)
    assert set(server.auth) == {f"Bearer {KEY}"}  # the key went to the server ...
    u = m["judge_usage"]
    assert u["calls"] == calls and u["prompt_tokens"] == 100 * calls and u["unparseable"] == 0
    wins = [c for c in m["claims"] if "wins against" in c["statement"]]
    assert wins and all(f"LLM judge {MODEL}" in c["statement"] for c in wins), [c["statement"] for c in m["claims"]]
    assert all(c["value"] is not None for c in wins)
    # the judge graded only the evaluation (the oracle labelled the training pairs): N SFT samples and one DPO response
    # per held-out prompt, and MT-Bench's two turns of two questions for SFT and DPO
    n_eval, n = int(SHRUNK["dpo"][1]["n_eval"]), max(json.loads(SHRUNK["dpo"][1]["bon_ns"]))
    assert 0 < u["calls"] <= n_eval * (n + 1) + 2 * 2 * 2, u  # (identical answers are graded once: the cache)
    held_out = {json.loads(line)["prompt"] for line in (tmp_path / "a" / "dpo" / "frontier" / "samples.jsonl").read_text().splitlines()}
    mt = [t for q in load_mtbench()[:2] for t in q["turns"]]
    graded = [b["messages"][-1]["content"] for b in server.requests]
    assert all(any(q in g for q in held_out) or any(t in g for t in mt) for g in graded)  # no training prompt was sent
    mt = [r for r in m["tables"]["benchmarks"] if r["benchmark"] == "mt_bench"]
    assert [r["policy"] for r in mt] == ["SFT", "DPO β=0.3"] and all(1 <= r["score"] <= 10 and r["n"] == 2 for r in mt)
    assert (tmp_path / "a" / "dpo" / "frontier" / "mt_bench.png").stat().st_size > 10_000  # the radar
    # ... and nowhere else: not in the run folder, the cache or the output
    for p in [*tmp_path.rglob("*")]:
        if p.is_file(): assert KEY.encode() not in p.read_bytes(), p
    assert KEY not in r.stdout + r.stderr
    # run again (as after a kill: the data and rows resume from the run folder) it asks the server nothing
    m2, _ = reproduce(tmp_path / "a", server, cache)
    assert len(server.requests) == calls and m2["judge_usage"]["calls"] == 0 and m2["judge_usage"]["cache_hits"] > 0
    assert [c["value"] for c in m2["claims"]] == [c["value"] for c in m["claims"]]


def test_a_judge_server_without_the_model_stops_the_run_before_training(server, tmp_path):
    config, overrides = SHRUNK["dpo"]
    args = [str(BIN / "selfalign"), "reproduce", "dpo", "--scale", "tiny", "-c", config, "--out", str(tmp_path / "run"),
            "-p", "judge", "llm", "-p", "judge_model", "not-served", "-p", "judge_base_url", server.url, "-p", "judge_cache", str(tmp_path)]
    for k, v in overrides.items(): args += ["-p", k, str(v)]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode != 0 and "does not serve model 'not-served'" in r.stderr, r.stderr[-2000:]
    assert not list((tmp_path / "run").rglob(DATA_CACHE)), "the data stage ran before the judge was checked"
    assert not server.requests  # only the model list was asked for


def test_check_names_a_server_that_is_down_or_refuses_the_key():
    f = Fake()
    try:
        assert MODEL in LLMJudge(MODEL, base_url=f.url).check()
        with pytest.raises(LLMJudgeError, match="unreachable"): LLMJudge(MODEL, base_url="http://127.0.0.1:9/v1").check()
        f.httpd.RequestHandlerClass.do_GET = lambda h: h.send(401, {"error": {"message": "Incorrect API key provided", "code": 401}})
        with pytest.raises(LLMJudgeError, match="HTTP 401.*Incorrect API key.*variable the config names"): LLMJudge(MODEL, base_url=f.url).check()
    finally: f.httpd.shutdown(); f.httpd.server_close()


def test_llm_judge_needs_a_model_and_is_one_object_per_endpoint(tmp_path):
    with pytest.raises(ValueError, match="needs judge_model"): BandConfig(judge="llm")
    a = BandConfig(judge="llm", judge_model=MODEL, judge_base_url="http://127.0.0.1:9/v1", judge_cache=str(tmp_path))
    assert make_judge(a) is make_judge(a.replace(n_eval=7))
    assert make_judge(a) is not make_judge(a.replace(judge_model="other"))
    assert not re.search(r"sk-", json.dumps(a.to_dict()))


def test_the_labeller_makes_the_training_signal_and_the_judge_evaluates():
    "At `paper` scale GPT-4 evaluates while a cheaper labeller labels pairs and rewards the gold PPO row."
    from selfalign.bands.dpo import DPOBandConfig, pair_judge
    from selfalign.judges.proxy import ProxyJudge
    from selfalign.world.base import OracleJudge
    cfg = BandConfig(judge="llm", judge_model=MODEL, labeller="oracle")
    assert isinstance(make_judge(cfg), LLMJudge) and isinstance(make_judge(cfg, "labeller"), OracleJudge)
    assert isinstance(make_judge(BandConfig(prompts="offline", judge="proxy"), "labeller"), ProxyJudge)  # unset: the judge
    assert isinstance(pair_judge(DPOBandConfig(judge="llm", judge_model=MODEL, labeller="oracle")), OracleJudge)
    with pytest.raises(ValueError, match="labeller must be oracle, proxy or llm"): BandConfig(labeller="gpt-4")
    with pytest.raises(ValueError, match="the oracle judges world prompts only"): BandConfig(prompts="offline", judge="proxy", labeller="oracle")
    with pytest.raises(ValueError, match="needs judge_model"): BandConfig(judge="proxy", prompts="offline", labeller="llm")
    with pytest.raises(ValueError, match="role must be"): make_judge(cfg, "evaluator")


def test_win_rates_against_hh_rlhfs_chosen_responses(tmp_path):
    "The DPO paper's evaluation: each policy's responses against the chosen ones, pairwise in both orders (the default judge: GOOD wins)."
    from selfalign.bands.base import HHRLHFPrompts
    from selfalign.bands.dpo import DPOBandConfig, chosen_win_rates
    from selfalign.data.records import DataError
    f, fixture = Fake(), str(ROOT / "tests" / "fixtures" / "hh_rlhf.jsonl")
    try:
        cfg = DPOBandConfig(policy="x", reward_init="x", prompts="hh-rlhf", pairs="hh-rlhf", pairs_files=fixture, judge="rm", win_vs_chosen=True,
                            judge_model=MODEL, judge_base_url=f.url, judge_cache=str(tmp_path), ppo_gold_kl=None, ppo_kl_coefs=())
        assert cfg.uses_llm()  # the run checks the endpoint and counts its calls though the RM judges the frontier
        prompts = HHRLHFPrompts(fixture).prompts(4, "test")
        n = len(prompts); assert n >= 2
        samples = [{"policy": "SFT", "response": "meh"} for _ in prompts] + [{"policy": "DPO β=0.3", "response": "GOOD answer"} for _ in prompts]
        rows = chosen_win_rates(cfg, prompts, samples, ["SFT", "DPO β=0.3"])
        assert [(r["policy"], r["win_rate"], r["n"], r["judge"]) for r in rows] == [("SFT", 0.5, n, f"LLM judge {MODEL}"), ("DPO β=0.3", 1.0, n, f"LLM judge {MODEL}")]
        assert len(f.requests) == 2 * 2 * n  # both orders, both policies, every prompt
        assert all(any(p.text in u for p in prompts) for u in f.users())
        with pytest.raises(DataError, match="not hh-rlhf's test prompts in order"): chosen_win_rates(cfg, prompts[::-1], samples, ["SFT"])
        with pytest.raises(ValueError, match="needs prompts hh-rlhf and judge_model"): DPOBandConfig(judge="oracle", win_vs_chosen=True, judge_model=MODEL)
    finally: f.httpd.shutdown(); f.httpd.server_close()
