"""Training stages as real processes on this CPU: 2 ranks (gloo) against 1 rank at the same global batch, per engine.

Every multi-process test asserts how the ranks actually ran (distributed type, the model's wrapper class, one row per
rank), not only that the run finished: accelerate falls back silently in several configurations (see
`selfalign.trainers.launch`). The 2-rank runs use 4 pairs per rank; the 1-rank reference 4 pairs × 2 accumulation steps.
Both run with `OMP_NUM_THREADS=1` (the launcher's default on this machine); the first run also checks the
reference-log-prob precompute under several processes (it crashed when the dataset lived in memory).
"""
import json
import random
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfalign.data.records import PreferencePair
from selfalign.trainers.launch import LaunchConfig, StageFailed, StageJob, launch, rank_records
from selfalign.trainers.stages import PreferenceStageConfig
from selfalign.world import base as W
from selfalign.world.models import default_world_dir

STEPS = 4
WRAPPERS = {"ddp": ("MULTI_CPU", "DistributedDataParallel"), "zero2": ("DEEPSPEED", "DeepSpeedEngine"),
            "zero3": ("DEEPSPEED", "DeepSpeedEngine")}


@pytest.fixture(scope="module")
def pairs():
    rng = random.Random(0)
    good = lambda p: " " + W.render_response(p, "refuse_explain" if p.kind == "harmful" else "correct", rng)
    bad = lambda p: " " + W.render_response(p, "comply" if p.kind == "harmful" else "wrong", rng)
    return [PreferencePair(W.render_dialogue(p.text), good(p), bad(p)) for p in W.world_prompts(48, "train", seed=5)]


def job(**cfg) -> StageJob:
    world = default_world_dir()
    c = PreferenceStageConfig(max_steps=STEPS, batch_size=4, learning_rate=3e-4, lr_scheduler_type="constant", logging_steps=1,
                              max_length=128, trace_rows=True, seed=0).replace(**cfg)
    return StageJob("preference", c.to_dict(), model=str(world / "sft"), tokenizer=str(world / "tokenizer"))


def rows_seen(out: Path) -> dict[int, list[str]]:
    return {int(p.stem.split("rank")[1]): [json.loads(l) for l in p.read_text().splitlines()]
            for p in (out / "logs").glob("rows-rank*.jsonl")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, pairs, monkeypatch_module):
    "One process, 4 pairs × 2 accumulation steps: the global batch of the 2-rank runs."
    out = tmp_path_factory.mktemp("ref")
    res = launch(job(gradient_accumulation_steps=2), out, LaunchConfig(launcher="accelerate"), records=pairs)
    return out, res


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch(); mp.setenv("OMP_NUM_THREADS", "1"); yield mp; mp.undo()


@pytest.mark.parametrize("engine", ["ddp", "zero2", "zero3"])
def test_two_ranks_match_one(engine, tmp_path, pairs, reference):
    ref_out, ref = reference
    res = launch(job(), tmp_path, LaunchConfig(launcher="accelerate", num_processes=2, engine=engine), records=pairs)
    recs = rank_records(tmp_path)
    dist, wrapper = WRAPPERS[engine]
    assert [(r["rank"], r["world_size"], r["distributed_type"], r["wrapper"]) for r in recs] == [(0, 2, dist, wrapper), (1, 2, dist, wrapper)]
    assert [r["distributed_type"] for r in rank_records(ref_out)] == ["NO"]
    if engine != "zero3": assert recs[0]["params_sha1"] == recs[1]["params_sha1"]  # ZeRO-3 ranks hold different shards
    losses, ref_losses = res.losses(), ref.losses()
    assert len(losses) == len(ref_losses) == STEPS
    assert max(abs(a - b) for a, b in zip(losses, ref_losses)) < 1e-5, (losses, ref_losses)
    seen, ref_seen = rows_seen(tmp_path), rows_seen(ref_out)
    # the collators also see the one batch the dataloader fetches ahead after the last step: compare the trained rows
    seen, ref_rows = {r: v[:STEPS * 4] for r, v in seen.items()}, ref_seen[0][:STEPS * 8]
    assert sorted(seen) == [0, 1] and len(seen[0]) == len(seen[1]) == STEPS * 4
    assert not set(seen[0]) & set(seen[1])  # no row seen by two ranks
    assert sorted(seen[0] + seen[1]) == sorted(ref_rows)  # the same rows as the one-rank run
    w, w_ref = load_file(res.final_dir / "model.safetensors"), load_file(ref.final_dir / "model.safetensors")
    assert w_ref.keys() <= w.keys()  # DeepSpeed also writes the tied `lm_head.weight`
    diff = torch.cat([(w[k].float() - w_ref[k].float()).abs().flatten() for k in w_ref])
    if engine == "zero3":  # gradients reduce-scattered in another order: Adam's step on an element whose gradient is
        # ~0 turns on its last bits, so a few elements may move by a fraction of lr (seen: 2.1e-5 on an AVX2-only EPYC)
        assert (diff > 1e-5).float().mean().item() < 1e-4 and diff.max().item() < 3e-4, (int((diff > 1e-5).sum()), diff.max().item())
    else: assert diff.max().item() < 1e-5
    assert (tmp_path / "data" / "train").is_dir()  # the stage's data on disk, where every rank reads it


def test_killed_rank_fails_loudly_and_resumes(tmp_path, pairs, reference, monkeypatch):
    "Rank 1 is SIGKILLed at step 3 (after the step-2 checkpoint): the error names stage, rank and log; a re-run resumes."
    j = job(max_steps=STEPS, save_steps=2, gradient_accumulation_steps=1, trace_rows=False)
    spec = LaunchConfig(launcher="accelerate", num_processes=2)
    monkeypatch.setenv("SELFALIGN_KILL_AT", "1:3")  # rank:step — a real SIGKILL of that rank's process
    with pytest.raises(StageFailed) as e:
        launch(j, tmp_path, spec, records=pairs)
    msg = str(e.value)
    assert "stage 'preference'" in msg and "rank 1" in msg and "rank1.log" in msg and "-9" in msg, msg
    assert (tmp_path / "checkpoint-2" / "trainer_state.json").exists() and not (tmp_path / "final").exists()
    monkeypatch.delenv("SELFALIGN_KILL_AT")
    res = launch(j, tmp_path, spec, records=pairs)
    assert "resuming from" in (tmp_path / "logs" / "rank0.log").read_text()
    assert [r["step"] for r in res.log_history if "loss" in r][-2:] == [3, 4]
    _, ref = reference
    assert max(abs(a - b) for a, b in zip(res.losses(), ref.losses())) < 1e-5  # the same trajectory as uninterrupted


def test_inprocess_refuses_several_processes_and_fsdp2_needs_gpus(tmp_path, pairs):
    from selfalign.core.base import ConfigError
    with pytest.raises(ConfigError, match="needs launcher 'accelerate'"):
        LaunchConfig(num_processes=2)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs GPUs"):
            launch(job(), tmp_path, LaunchConfig(launcher="accelerate", num_processes=2, engine="fsdp2"), records=pairs)


def test_tensorboard_gets_every_logged_step(tmp_path, pairs):
    "report_to reaches the stage: TensorBoard event files under the stage folder hold the per-step training loss."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from selfalign.trainers.launch import run_job
    from selfalign.world.models import load_world_model
    res = run_job(job(max_steps=3, report_to="tensorboard", trace_rows=False), tmp_path, *load_world_model("sft"), data=pairs)
    runs = list((tmp_path / "runs").glob("*"))
    assert len(runs) == 1, runs
    ea = EventAccumulator(str(runs[0])); ea.Reload()
    loss = ea.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3]
    assert [round(e.value, 5) for e in loss] == [round(x, 5) for x in res.losses()]
    assert "train/rewards/accuracies" in ea.Tags()["scalars"]


def test_band_runs_its_stages_as_two_ranks(tmp_path):
    "The DPO band at a reduced tiny size with every stage as 2 ranks: same claims, each stage really ran on 2 ranks."
    from selfalign.bands.base import run_band
    from selfalign.bands.dpo import DPOBand, DPOBandConfig
    cfg = DPOBandConfig(n_prompts=120, n_eval=20, sft_steps=4, rm_steps=8, steps=6, betas=(0.3,), bon_ns=(1, 2), max_new_tokens=32,
                        launcher="accelerate", num_processes=2, ppo_kl_coefs=(), ppo_gold_kl=None)  # PPO rows train in-process
    res = run_band(DPOBand(), cfg, tmp_path, progress=lambda s: None)
    for stage in ("sft", "rm", "dpo-beta0.3"):  # every kind of stage the band launches
        recs = rank_records(tmp_path / stage)
        assert [(r["world_size"], r["distributed_type"]) for r in recs] == [(2, "MULTI_CPU")] * 2, (stage, recs)
        assert (tmp_path / stage / "job.json").exists() and (tmp_path / stage / "logs" / "rank1.log").exists()
    assert {c["id"] for c in res["claims"]} == {"dpo-rm-accuracy", "dpo-rm-reward-up", "dpo-beats-sft", "dpo-frontier"}
    assert res["rm_accuracy"] > 0.6  # the in-process run of this config: 0.76 (Adam amplifies float-order differences)
