"""The committed world (selfalign/assets/world) is what the code's default recipe builds, and small enough to commit."""
import json

from selfalign.world.models import (WorldBuildConfig, check_reproducible, config_hash, default_world_dir,
                                   load_world_model)

WORLD = default_world_dir()


def test_committed_world_matches_the_default_recipe():
    rec = json.loads((WORLD / "build.json").read_text())
    assert rec["config_hash"] == config_hash(WorldBuildConfig()), "the default recipe changed: run `selfalign world build`"
    size = sum(p.stat().st_size for p in WORLD.rglob("*") if p.is_file())
    assert size <= 25 * 2**20, f"{size / 2**20:.1f} MiB"


def test_committed_world_loads():
    for which in ("sft", "base-large", "base-small"):
        model, tok = load_world_model(which)
        assert model.config.vocab_size == len(tok)


def test_recipe_still_reproduces_the_committed_world():
    rep = check_reproducible(WORLD, steps=5)
    assert rep["ok"], rep
