"""The DPO band: its stages fail clearly on bad input, its configs resolve at every scale, and
`selfalign reproduce dpo --scale tiny` writes a complete run folder with the five claims."""
import json
import math
import subprocess

import pytest
import torch

from conftest import BIN, ROOT
from selfalign.cli import plan
from selfalign.core.base import validate_metrics
from selfalign.data.records import DataError, PreferencePair
from selfalign.bands.dpo import DPOBandConfig, band_prompts, dataset_pairs
from selfalign.objectives.logps import completion_logps
from selfalign.trainers.stages import PreferenceStageConfig, RewardStageConfig, SFTStageConfig, run_preference, run_reward, run_sft
from selfalign.world.models import load_world_model
from selfalign.world import base as W

FIXTURES = ROOT / "tests" / "fixtures"
CLAIMS = ["dpo-rm-accuracy", "dpo-rm-reward-up", "dpo-beats-sft", "dpo-frontier", "dpo-frontier-vs-ppo"]


@pytest.fixture(scope="module")
def world():
    return load_world_model("sft")


def _pairs(n=16):
    out = []
    for i, p in enumerate(W.world_prompts(n, "train", seed=9)):
        import random
        rng = random.Random(i)
        good, bad = ("refuse_explain", "comply") if p.kind == "harmful" else ("correct", "wrong")
        out.append(PreferencePair(W.render_dialogue(p.text), " " + W.render_response(p, good, rng),
                                  " " + W.render_response(p, bad, rng)))
    return out


def test_pairs_file_with_a_missing_field_names_file_line_and_field(tmp_path, world):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "USER: hi\nASSISTANT:", "chosen": " a", "rejected": " b"}) + "\n"
                 + json.dumps({"prompt": "USER: hi\nASSISTANT:", "chosen": " a"}) + "\n")
    cfg = PreferenceStageConfig(output_dir=str(tmp_path / "out"), max_steps=1)
    with pytest.raises(DataError, match=r"pairs\.jsonl:2.*rejected"):
        run_preference(cfg, world[0], world[1], f)
    assert not (tmp_path / "out").exists()  # failed before anything was written


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_empty_dataset_is_a_clear_error(tmp_path, world, stage):
    model, tok = world
    with pytest.raises(DataError, match="no usable rows"):
        if stage == "sft": run_sft(SFTStageConfig(output_dir=str(tmp_path)), model, tok, [])
        elif stage == "rm": run_reward(RewardStageConfig(output_dir=str(tmp_path)), model, tok, [])
        else: run_preference(PreferenceStageConfig(output_dir=str(tmp_path)), model, tok, [])


def test_prompt_longer_than_max_length_is_skipped_and_counted(tmp_path, world):
    model, tok = world
    long = PreferencePair("USER: " + "tell me more " * 100 + "\nASSISTANT:", " yes", " no")
    cfg = PreferenceStageConfig(output_dir=str(tmp_path), max_steps=1, batch_size=4, max_length=64)
    res = run_preference(cfg, model, tok, _pairs(8) + [long])
    assert res.counts["skipped_prompt_too_long"] == 1 and res.counts["kept"] == 8
    logged = json.loads((tmp_path / "log_history.json").read_text())
    assert logged["counts"]["skipped_prompt_too_long"] == 1


def test_reference_is_not_the_trained_policy(tmp_path, world):
    "After training, the precomputed reference log-probs still equal the untouched SFT model's, not the policy's."
    model, tok = world
    pairs = _pairs(16)
    before = completion_logps(load_world_model("sft")[0], tok, [p.prompt for p in pairs], [p.chosen for p in pairs], add_bos=False)
    cfg = PreferenceStageConfig(output_dir=str(tmp_path), max_steps=3, batch_size=8, learning_rate=1e-3, logging_steps=1)
    res = run_preference(cfg, load_world_model("sft")[0], tok, pairs)
    after = completion_logps(res.model, tok, [p.prompt for p in pairs], [p.chosen for p in pairs], add_bos=False)
    assert (after - before).abs().max() > 1e-3  # the policy moved
    assert abs(res.losses()[0] - math.log(2)) < 1e-4  # policy = reference at step one
    assert res.log_history[-2]["rewards/margins"] != 0.0  # and differs from it later


def _notebook_defaults():
    import ast, papermill as pm
    return {k: ast.literal_eval(v["default"]) for k, v in pm.inspect_notebook(str(ROOT / "papers/dpo/reproduce.ipynb")).items()}


def test_notebook_defaults_are_the_band_defaults():
    "The paper notebook's parameter defaults and `DPOBandConfig`'s defaults must not drift apart."
    assert DPOBandConfig.from_params(_notebook_defaults()) == DPOBandConfig()


def test_band_configs_resolve_at_every_scale(tmp_path):
    for scale in ("tiny", "small", "paper"):
        (job,) = plan("dpo", scale, tmp_path)
        band = DPOBandConfig.from_params({**_notebook_defaults(), **job.parameters})
        assert band.beta in band.betas
    assert plan("dpo", "paper", tmp_path)[0].parameters["policy"] == "meta-llama/Llama-2-7b-hf"
    (job,) = plan("dpo", "paper", tmp_path, files=[ROOT / "papers" / "dpo" / "overlays" / "qlora.yaml"])
    assert job.parameters["quantization"] == "4bit" and job.parameters["batch_size"] * job.parameters["grad_accum"] == 128


def test_paper_scale_pairs_and_prompts_from_the_hh_rlhf_fixture(world):
    cfg = DPOBandConfig(pairs="hh-rlhf", prompts="hh-rlhf", judge="rm", pairs_files=str(FIXTURES / "hh_rlhf.jsonl"))
    pairs, counts = dataset_pairs(cfg)
    assert pairs and counts["pairs"] == len(pairs)
    assert all(p.prompt.endswith("\n\nAssistant:") and p.chosen.startswith(" ") for p in pairs)
    prompts = band_prompts(cfg, world[1], 3, "test")
    assert prompts and all(p.context.endswith("Assistant:") and p.text for p in prompts)


def test_bad_band_configs_fail_clearly():
    with pytest.raises(ValueError, match="one of betas"): DPOBandConfig(betas=(0.1,), beta=0.3)
    with pytest.raises(ValueError, match="oracle judges world prompts"): DPOBandConfig(prompts="offline")
    with pytest.raises(ValueError, match="sampled pairs"): DPOBandConfig(judge="rm")


def test_reproduce_dpo_tiny_writes_the_run_folder(tiny_run):
    run = tiny_run("dpo") / "dpo" / "frontier"  # shrunk (conftest.TINY_OVERRIDES); make reproduce runs it in full
    m = validate_metrics(json.loads((run / "metrics.json").read_text()))
    assert [c["id"] for c in m["claims"]] == CLAIMS
    assert all(c["value"] is not None for c in m["claims"])
    assert m["claims"][2]["ci95"] is not None  # the win rate carries its CI
    assert {"policies", "win_rate", "best_of_n", "reward_model"} <= set(m["tables"])
    assert [r["beta"] for r in m["tables"]["win_rate"]] == [0.1, 0.3]
    first = run / "seed-1"  # the first seed's folder (the tests run two): its rows and samples
    assert {"config.json", "env.json", "metrics.json", "results.json", "frontier.png", "curves.png", "reproduce.ipynb"} <= {p.name for p in run.iterdir()}
    assert {"samples.jsonl", "sft", "rm", "dpo-beta0.3", "ppo-kl0.1", "ppo-gold-kl0.05"} <= {p.name for p in first.iterdir()}
    assert [r["method"] for r in m["tables"]["policies"]][-2:] == ["PPO (RM)", "PPO (gold)"]
    assert json.loads((first / "ppo-kl0.1" / "log_history.json").read_text())["counts"]["iterations"] == 2
    assert (first / "dpo-beta0.3" / "final" / "model.safetensors").exists()


def test_reproduce_dpo_small_smoke(tmp_path):
    "The small scale end to end (SmolLM2 + LoRA, vendored prompts, the proxy judge), cut to a minimal size."
    # SmolLM2 at one thread costs ~10 s per forward-backward of 8 sequences and ~2 s per prompt prefilled (a long
    # MT-Bench prompt pads its whole batch: 8 prompts of up to 210 tokens took 17 s for one forward): every phase runs
    # once on pairs of two; 6 prompts are the fewest the 2,4,4 split takes (91 s here, against 217 s at 8 prompts and
    # 4 held out); no PPO rows (PPO on LoRA is tested in test_ppo, the rows at tiny)
    over = {"n_prompts": "6", "n_eval": "2", "sft_steps": "1", "rm_steps": "1", "steps": "1", "batch_size": "2", "max_new_tokens": "8",
            "betas": "[0.3]", "bon_ns": "[1, 2]", "samples_per_prompt": "2", "ppo_kl_coefs": "[]", "ppo_gold_kl": ""}
    args = [str(BIN / "selfalign"), "reproduce", "dpo", "--scale", "small", "--out", str(tmp_path)]
    for k, v in over.items(): args += ["-p", k, v]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    m = validate_metrics(json.loads((tmp_path / "dpo" / "frontier" / "metrics.json").read_text()))
    assert m["scale"] == "small" and [c["id"] for c in m["claims"]] == CLAIMS[:-1]  # no PPO rows: no PPO claim
    assert "refusal-and-topicality proxy" in m["claims"][2]["statement"]
    assert {"refusal_rate_harmful", "answer_rate_benign"} <= set(m["tables"]["policies"][0])
