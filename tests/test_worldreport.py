"""`selfalign world report` on a deliberately tiny world build: the report's contract, not the world's quality."""
import json

import pytest

from selfalign.world import base as W
from selfalign.cli import main
from selfalign.world.models import ModelShape, TrainConfig, WorldBuildConfig, build_world

KEYS = ["harmless_rate_pos_affix", "harmless_rate_neg_affix", "harmless_rate_no_affix", "helpful_rate_pos_affix",
        "helpful_rate_no_affix", "gold_reward_large", "gold_reward_small", "gold_reward_good_demos",
        "gold_reward_bad_demos", "judge_agreement", "self_reward_agreement", "garbage_rate_no_affix", "pair_tie_rate",
        "build_seconds", "params_large", "params_small"]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    cfg = WorldBuildConfig(n_docs=200, n_sft=40, small=ModelShape(32, 1, 2), large=ModelShape(64, 2, 2),
                           pretrain_small=TrainConfig(max_steps=2, batch_size=4, seq_len=64),
                           pretrain_large=TrainConfig(max_steps=2, batch_size=4, seq_len=64),
                           sft=TrainConfig(max_steps=2, batch_size=4, seq_len=64))
    d = tmp_path_factory.mktemp("w") / "world"
    build_world(cfg, d)
    return d


def test_world_report_writes_flat_keys_nested_table_targets_and_figure(tiny_world, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["world", "report", "--world", str(tiny_world), "--prompts", "12", "--pairs", "6", "--out", str(out)]) == 0
    r = json.loads((out / "world_report.json").read_text())
    for k in KEYS:  # the self-reward agreement is undefined (null) when no pair is both scored and ordered by the oracle
        assert isinstance(r[k], float) or (k == "self_reward_agreement" and r["n_self_reward_pairs"] == 0), (k, r[k])
    assert r["n_contrastive_pairs"] == 6 and 0 <= r["n_contrastive_pairs_empty"] <= 6
    assert r["n_self_reward_pairs"] <= r["n_contrastive_pairs"] - r["n_contrastive_pairs_empty"]
    assert set(r["by_kind"]["no_affix"]) == {"harmful", "borderline", "benign", "all"}
    fams = r["helpful_by_family"]["helpful_pos_affix"]
    assert fams and set(fams) <= {"capital", "next", "convert", "repeat", "spell", "define"}
    assert sum(f["n"] for f in fams.values()) == r["by_kind"]["helpful_pos_affix"]["benign"]["n"]
    per = r["judge_by_principle"]
    assert sum(v["n"] for v in per.values()) == r["n_judge_pairs"] and set(per) <= set(W.JUDGEABLE)
    assert abs(sum(v["n"] * v["agreement"] for v in per.values()) / r["n_judge_pairs"] - r["judge_agreement"]) < 1e-3
    assert {t["id"] for t in r["targets"]} >= {"world-affix-gap-min", "world-judge-agreement-min"}
    assert all(isinstance(t["holds"], bool) for t in r["targets"])
    assert (out / "world_report.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "world_report.json" in printed and ("MISS" in printed or "ok" in printed)
    assert r["garbage_rate_no_affix"] > 0.5  # two training steps: the oracle must call the output garbage


def test_world_report_measures_with_the_judges_dlma_uses(tiny_world):
    "The report's self-reward and judge agreement are the judges' functions, not copies with their own conventions."
    import selfalign.judges.selfjudge as SJ
    import selfalign.judges.selfreward as SR
    import selfalign.world.report as R
    assert R.self_reward_margins is SR.self_reward_margins and R.two_order_scores is SJ.two_order_scores
    assert not hasattr(R, "completion_logps")  # no scoring of its own
    from selfalign.world.models import load_world_model
    model, tok = load_world_model("sft", tiny_world)
    pairs = [(k, p.text, "I can't help with that.", "Sure, here it is.", 1)
             for k, p in zip(W.JUDGEABLE, W.world_prompts(4, "test", seed=1))]
    share, hits = R.judge_agreement(model, tok, pairs)
    s = SJ.two_order_scores(model, tok, [W.render_judging(k, q, a, b) for k, q, a, b, _ in pairs],
                            [W.render_judging(k, q, b, a) for k, q, a, b, _ in pairs], " ")
    assert hits == [int(v > 0) for v in s] and share == round(sum(hits) / len(hits), 4)


def test_world_report_without_a_build_fails_clearly(tmp_path, capsys):
    assert main(["world", "report", "--world", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "selfalign world build" in capsys.readouterr().err
