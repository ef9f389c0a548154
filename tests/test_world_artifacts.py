"""The committed world (selfalign/assets/world) is what the code's default recipe builds, and small enough to commit."""
import copy
import json

import pytest

from selfalign.world.models import (CROSS_KERNEL_ATOL, EXACT_ATOL, WorldBuildConfig, compare_replay, config_hash,
                                   default_world_dir, load_world_model, replay_world, same_kernels)

WORLD = default_world_dir()
STEPS = 3  # steps 0-2: the data, the initialisation and two optimiser updates (warm-up included); ~50 s a step in bf16 on AVX2


@pytest.fixture(scope="module")
def record():
    return json.loads((WORLD / "build.json").read_text())


@pytest.fixture(scope="module")
def replayed():
    "One replay of the committed world's first steps, shared by every check below (the slow part: minutes on 2 cores)."
    return replay_world(WORLD, steps=STEPS)


def _nudged(rec, stage, step, delta):
    "`rec` with one recorded loss moved by `delta`."
    out = copy.deepcopy(rec)
    out["stages"][stage]["first_losses"][step] += delta
    return out


def test_committed_world_matches_the_default_recipe(record):
    assert record["config_hash"] == config_hash(WorldBuildConfig()), "the default recipe changed: run `selfalign world build`"
    size = sum(p.stat().st_size for p in WORLD.rglob("*") if p.is_file())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"


def test_committed_world_loads():
    for which in ("sft", "base-large", "base-small"):
        model, tok = load_world_model(which)
        assert model.config.vocab_size == len(tok)


def test_recipe_still_reproduces_the_committed_world(replayed, record):
    rep = compare_replay(replayed, record)
    same = same_kernels(record.get("kernels"), replayed["kernels"])
    assert (rep["mode"], rep["atol"]) == (("exact", EXACT_ATOL) if same else ("cross-kernel", CROSS_KERNEL_ATOL))
    assert rep, rep
    assert all(rep[s]["steps"] == STEPS for s in ("base-small", "base-large", "sft"))


def test_same_kernels_are_held_to_exact_losses(replayed, record):
    # a record made on these very kernels, holding what they replay: exact, and a 1e-5 nudge is caught
    here = {**copy.deepcopy(record), "kernels": replayed["kernels"]}
    for s, losses in replayed["losses"].items(): here["stages"][s]["first_losses"] = list(losses)
    rep = compare_replay(replayed, here)
    assert rep and rep["mode"] == "exact" and all(rep[s]["max_abs_diff"] == 0 for s in replayed["losses"])
    assert not compare_replay(replayed, _nudged(here, "sft", 2, 10 * EXACT_ATOL))
    # the same nudge is within the tolerance once the record's kernels differ or are unknown
    for kernels in (None, {**replayed["kernels"], "isa": ["amx_bf16"] if replayed["kernels"]["isa"] != ["amx_bf16"] else []},
                    {**replayed["kernels"], "torch": "0.0"}):
        rep = compare_replay(replayed, _nudged({**here, "kernels": kernels}, "sft", 2, 10 * EXACT_ATOL))
        assert rep and rep["mode"] == "cross-kernel", rep


def test_cross_kernel_tolerance_still_catches_a_moved_loss(replayed, record):
    cross = {**record, "kernels": None}
    assert compare_replay(replayed, cross)
    for stage in ("base-small", "base-large", "sft"):
        rep = compare_replay(replayed, _nudged(cross, stage, 2, 2 * CROSS_KERNEL_ATOL))
        assert not rep and not rep[stage]["ok"] and rep["mode"] == "cross-kernel"
        assert all(rep[s]["ok"] for s in ("base-small", "base-large", "sft") if s != stage)


def test_a_changed_recipe_fails_the_check(record):
    # a real change: base-small's warm-up halved (its lr doubles over the first steps); replayed on its own
    cfg = WorldBuildConfig.from_dict(record["config"])
    changed = cfg.replace(pretrain_small=cfg.pretrain_small.replace(warmup_steps=cfg.pretrain_small.warmup_steps // 2))
    rep = compare_replay(replay_world(WORLD, steps=STEPS, cfg=changed, stages=("base-small",)), {**record, "kernels": None})
    assert not rep and not rep["base-small"]["ok"], rep
    assert rep["base-small"]["max_abs_diff"] > 5 * CROSS_KERNEL_ATOL, rep["base-small"]
