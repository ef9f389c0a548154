"""Our PPO on the world: it beats the SFT model on the oracle's reward at a moderate KL; with LoRA the reference is the
base model under the disabled adapter (no copy, the base untouched); the no-EOS score replaces the score, SALMON's
stop-token penalty and length bonus add to it."""
import contextlib
import copy

import numpy as np
import pytest
import torch

from selfalign.eval.policy import estimate, kl_on_samples, win_outcomes
from selfalign.generate.base import HFGenerator, SamplingParams
from selfalign.models.loader import LoraSpec, apply_lora
from selfalign.trainers.ppo import AdapterCritic, PPOStageConfig, run_ppo
from selfalign.world import base as W
from selfalign.world.models import load_world_model


@pytest.fixture(scope="module")
def world():
    sft, tok = load_world_model("sft")
    train, test = W.world_prompts(400, "train", seed=11), W.world_prompts(600, "test", seed=12)
    ctx = {W.render_dialogue(p.text): p for p in train + test}
    oracle = lambda prompts, responses: [W.judge(ctx[p].text, r).reward for p, r in zip(prompts, responses)]
    return sft, tok, [W.render_dialogue(p.text) for p in train], [W.render_dialogue(p.text) for p in test], oracle


def cfg(tmp_path, **kw):
    return PPOStageConfig(output_dir=str(tmp_path), max_steps=1, rollout_prompts=32, ppo_epochs=4, mini_batches=2, learning_rate=2e-5,
                          max_new_tokens=48, temperature=1.0, kl_coef=0.05, lr_scheduler_type="constant", seed=0).replace(**kw)


def test_ppo_on_the_oracle_beats_sft_at_a_moderate_kl(tmp_path, world):
    sft, tok, train, test, oracle = world
    res = run_ppo(cfg(tmp_path, max_steps=16, ppo_epochs=2), copy.deepcopy(sft), tok, train, oracle)
    sp = SamplingParams(n=1, temperature=1.0, max_new_tokens=48, seed=5)
    gens = {n: HFGenerator(m, tok, batch_size=120, dtype=torch.float32).generate(test, sp) for n, m in (("ppo", res.model), ("sft", sft))}
    gold = {n: oracle(test, [x.texts[0] for x in g]) for n, g in gens.items()}
    win = estimate(win_outcomes(gold["ppo"], gold["sft"], 1e-9))
    kl = kl_on_samples(res.model, sft, tok, gens["ppo"])
    print(f"PPO vs SFT on {len(test)} held-out prompts: win {win.mean:.3f} {win.ci95}, gold {np.mean(gold['ppo']):.3f} vs "
          f"{np.mean(gold['sft']):.3f}, KL {kl.mean:.3f}")
    assert win.ci95[0] > 0.5, win
    assert kl.mean < 3.0, kl  # moderate: the reward was not bought with a collapse
    assert res.log_history[0]["kl"] == 0 and res.log_history[0]["first_approx_kl"] == 0


def test_lora_reference_is_the_base_under_the_disabled_adapter(tmp_path, world):
    sft, tok, train, _, oracle = world
    before = {k: v.clone() for k, v in sft.state_dict().items()}
    policy = apply_lora(copy.deepcopy(sft), LoraSpec(r=8, alpha=16, dropout=0.0))
    res = run_ppo(cfg(tmp_path, max_steps=2, learning_rate=1e-3), policy, tok, train, oracle)
    assert res.log_history[0]["kl"] == 0 and res.log_history[0]["first_approx_kl"] == 0
    assert res.log_history[1]["kl"] != 0  # the adapter moved the policy away from its reference
    base = {k.replace(".base_layer", ""): v for k, v in res.model.get_base_model().state_dict().items() if "lora_" not in k}
    assert base.keys() == before.keys() and all(torch.equal(before[k], base[k]) for k in before)  # the reference, untouched
    assert (res.final_dir / "adapter_config.json").exists() and not (res.final_dir / "model.safetensors").exists()


def test_no_eos_score_replaces_the_score_of_unfinished_responses(tmp_path, world):
    sft, tok, train, _, _ = world
    res = run_ppo(cfg(tmp_path, max_steps=1, max_new_tokens=2, no_eos_score=-1.0), copy.deepcopy(sft), tok, train,
                  lambda p, r: [1.0] * len(r))
    rec = res.log_history[0]
    assert rec["no_eos"] > 0.9 and rec["score"] == 1.0
    assert rec["shaped_score"] == pytest.approx(1.0 - 2.0 * rec["no_eos"])


def test_salmon_stop_penalty_and_length_bonus_are_applied_in_the_loop(tmp_path, world):
    # SALMON's launch script passed an undefined variable as its stop-token penalty, so it never applied; ours does.
    sft, tok, train, _, _ = world
    res = run_ppo(cfg(tmp_path, max_steps=1, max_new_tokens=2, no_eos_penalty=-6.0, length_bonus=5.0, length_bonus_tokens=4),
                  copy.deepcopy(sft), tok, train, lambda p, r: [1.0] * len(r))
    rec = res.log_history[0]
    assert rec["no_eos"] > 0.9 and rec["score"] == 1.0
    # every response has ≤ 2 tokens, so the bonus 5·min(len/4, 0.8) = 1.25·len stays under its cap
    assert rec["shaped_score"] == pytest.approx(1.0 - 6.0 * rec["no_eos"] + 1.25 * rec["response_length"], abs=1e-5)


def test_gradient_checkpointing_changes_memory_not_the_result(tmp_path, world, monkeypatch):
    # one rollout, four updates on it; the trained weights of the policy's adapter and of the critic's are compared
    sft, tok, train, _, oracle = world
    def run(name, gc):
        torch.manual_seed(0)  # the same LoRA initialisation
        policy = apply_lora(copy.deepcopy(sft), LoraSpec(r=8, alpha=16, dropout=0.0))
        c = cfg(tmp_path / name, max_steps=1, ppo_epochs=2, learning_rate=1e-3, critic="adapter", gradient_checkpointing=gc)
        res = run_ppo(c, policy, tok, train, oracle)
        return res.log_history[0], {n: p.detach().clone() for n, p in res.model.named_parameters() if "lora_" in n}
    gap = lambda a, b: max((a[k] - b[k]).abs().max().item() for k in a)
    (plain, w_plain), (gc, w_gc) = run("plain", False), run("gc", True)
    assert {k for k in w_plain if ".critic." in k} and {k for k in w_plain if ".default." in k}  # both adapters compared
    for k in ("score", "kl", "pg_loss", "vf_loss", "approx_kl"): assert plain[k] == pytest.approx(gc[k], rel=1e-6, abs=1e-9), k
    assert gap(w_plain, w_gc) < 1e-7, gap(w_plain, w_gc)  # measured: 0.0
    # the adapter critic's activations are recomputed at backward time under whichever adapter is active then: with its
    # backward not under its own adapter, the value loss trains the policy's adapter and not the critic's
    monkeypatch.setattr(AdapterCritic, "active", lambda self: contextlib.nullcontext())
    _, w_wrong = run("wrong", True)
    assert gap(w_plain, w_wrong) > 1e-5  # measured: 3.4e-4


def test_adapter_critic_shares_the_base_trains_and_resumes(tmp_path, world):
    "critic='adapter': a second LoRA adapter on the policy's base; the base stays untouched, both adapters train, and a"
    " run resumed from its checkpoint repeats the uninterrupted one."
    from selfalign.trainers.ppo import AdapterCritic
    from selfalign.trainers.stages import reward_model_from
    sft, tok, train, _, oracle = world
    spec = LoraSpec(r=8, alpha=16, dropout=0.0)
    rm = reward_model_from(copy.deepcopy(sft), tok.pad_token_id, lora=spec)  # a LoRA reward model of the same shape
    torch.nn.init.normal_(rm.base_model.model.score.modules_to_save["default"].weight, std=0.1)
    make = lambda: apply_lora(copy.deepcopy(sft), spec)
    c = cfg(tmp_path / "a", max_steps=3, learning_rate=1e-3, critic="adapter", save_steps=2, rollout_prompts=16)
    probe = AdapterCritic(make(), init=rm)
    assert torch.equal(probe.score.weight, rm.base_model.model.score.modules_to_save["default"].weight)  # its head and adapter from the RM
    a = run_ppo(c, make(), tok, train, oracle, critic=rm)
    assert all(r["vf_loss"] is not None and np.isfinite(r["vf_loss"]) for r in a.log_history)
    assert (a.final_dir / "adapter_config.json").exists() and not (a.final_dir / "critic").exists()  # the policy's adapter alone
    assert (a.output_dir / "critic" / "critic" / "adapter_model.safetensors").exists() and (a.output_dir / "critic" / "value_head.safetensors").exists()
    from safetensors.torch import load_file
    assert not torch.equal(load_file(a.output_dir / "critic" / "value_head.safetensors")["score.weight"], probe.score.weight)  # it trained
    base = {k.replace(".base_layer", ""): v for k, v in a.model.get_base_model().state_dict().items() if "lora_" not in k}
    assert all(torch.equal(v, sft.state_dict()[k]) for k, v in base.items())  # one base, untouched
    b = run_ppo(c.replace(output_dir=str(tmp_path / "a")), make(), tok, train, oracle, critic=rm, resume_from=tmp_path / "a" / "checkpoint-2")
    for x, y in zip(a.log_history, b.log_history):
        for key in ("score", "kl", "pg_loss", "vf_loss"): assert x[key] == pytest.approx(y[key], abs=1e-5), (key, x, y)
