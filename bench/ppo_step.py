"""PPO iteration cost, ours against the last TRL PPO (`trl.experimental.ppo.PPOTrainer`, trl 1.12), side by side in one
run: the same model, prompts, batch shape (rollouts of `--prompts` prompts, 2 minibatches, `--epochs` PPO epochs),
response length, reward model (a scalar head on the world's base-large, or on SmolLM2) and critic (a copy of that reward
model), full fine-tuning and LoRA (reference = the disabled adapter in both). Ours also runs `lora-adapter`: the critic
as a second LoRA adapter on the policy's own base (`critic="adapter"`) instead of a full copy of the reward model, and
`lora-adapter-gc`: the same with gradient checkpointing (activations recomputed in the training passes; TRL runs at its
default, without).

Every configuration runs in its own process (`--one`), so its peak RSS is its own. trl 1.12 is installed once with
`pip install --no-deps --target bench/.cache/trl-1.12`; a TRL process builds the models with selfalign (our trl 1.16
loaded), then drops trl from `sys.modules` and imports trl 1.12 from that folder for its `PPOTrainer`: it runs on our
pinned torch / transformers / accelerate / peft. Our rows also give the split of an iteration into
rollout / reference (the rollout policy's and the reference's log-probs, the critic's values) / scoring / training.

Prints a table and writes bench/results/ppo_step.json.

    python bench/ppo_step.py [--iterations 3] [--prompts 32] [--models tiny,smollm2] [--modes lora-adapter,lora-adapter-gc]
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import argparse
import copy
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRL_DIR = HERE / ".cache" / "trl-1.12"
PHASES = ("rollout_s", "reference_s", "scoring_s", "train_s")
SIZES = {"tiny": {"max_new_tokens": 48}, "smollm2": {"max_new_tokens": 32}}


def _setup(model: str, prompts: int, iterations: int):
    "(policy, tokenizer, reward model, rendered prompts) for one configuration."
    import torch
    from selfalign.trainers.stages import reward_model_from
    from selfalign.world import base as W
    if model == "tiny":
        from selfalign.world.models import load_world_model
        policy, tok = load_world_model("sft")
        backbone = load_world_model("base-large")[0]
        texts = [W.render_dialogue(p.text) for p in W.world_prompts(prompts * iterations, "train", seed=11)]
    else:
        from selfalign.bands.base import OfflinePrompts
        from selfalign.models.loader import load_smollm2
        policy, tok = load_smollm2()
        backbone = load_smollm2()[0]
        texts = [p.context for p in OfflinePrompts(tok).prompts(prompts * iterations, "train")]
    torch.manual_seed(0)
    rm = reward_model_from(backbone, tok.pad_token_id)
    torch.nn.init.normal_(rm.score.weight, std=0.02)  # a fixed non-zero head: rewards that vary
    return policy, tok, rm, texts


def _lora(mode: str):
    from selfalign.models.loader import LoraSpec
    return LoraSpec(r=16, alpha=32, dropout=0.0) if mode.startswith("lora") else None


def run_ours(model: str, mode: str, a) -> dict:
    import torch
    from selfalign.models.loader import apply_lora
    from selfalign.trainers.ppo import PPOStageConfig, run_ppo
    from selfalign.trainers.stages import reward_scores
    policy, tok, rm, texts = _setup(model, a.prompts, a.iterations)
    if mode.startswith("lora"): policy = apply_lora(policy, _lora(mode))
    reward = lambda prompts, responses: reward_scores(rm, tok, prompts, responses)
    with tempfile.TemporaryDirectory() as d:
        cfg = PPOStageConfig(output_dir=d, max_steps=a.iterations, rollout_prompts=a.prompts, ppo_epochs=a.epochs, mini_batches=2,
                             learning_rate=2e-5, max_new_tokens=SIZES[model]["max_new_tokens"], temperature=1.0, kl_coef=0.05,
                             seed=0, lr_scheduler_type="constant", gen_batch_size=a.prompts,
                             critic="adapter" if mode.startswith("lora-adapter") else "model", gradient_checkpointing=mode.endswith("-gc"))
        t = time.perf_counter(); res = run_ppo(cfg, policy, tok, texts, reward, critic=rm); wall = time.perf_counter() - t
    h = res.log_history
    return {"iteration_s": wall / a.iterations, **{k: sum(r[k] for r in h) / len(h) for k in PHASES},
            "response_tokens": sum(r["tokens"] for r in h) / len(h)}


def run_trl(model: str, mode: str, a) -> dict:
    from datasets import Dataset
    policy, tok, rm, texts = _setup(model, a.prompts, a.iterations)  # with our trl (selfalign imports it)
    for name in [m for m in sys.modules if m == "trl" or m.startswith("trl.")]: del sys.modules[name]
    sys.path.insert(0, str(TRL_DIR))  # then trl 1.12, for its PPOTrainer only
    import trl
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    assert trl.__version__.startswith("1.12"), trl.__version__
    tok.padding_side = "left"
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    if getattr(tok, "bos_token_id", None) is not None and model == "tiny": ids = [[tok.bos_token_id] + i for i in ids]
    ds = Dataset.from_dict({"input_ids": ids})
    with tempfile.TemporaryDirectory() as d:
        args = PPOConfig(output_dir=d, per_device_train_batch_size=a.prompts // 2, gradient_accumulation_steps=2, num_mini_batches=2,
                         num_ppo_epochs=a.epochs, total_episodes=a.prompts * a.iterations, response_length=SIZES[model]["max_new_tokens"],
                         temperature=1.0, learning_rate=2e-5, kl_coef=0.05, stop_token="eos", local_rollout_forward_batch_size=a.prompts,
                         num_sample_generations=0, report_to="none", save_strategy="no", use_cpu=True, seed=0,
                         lr_scheduler_type="constant", logging_steps=1, dataloader_num_workers=0, bf16=False)
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None if mode == "lora" else copy.deepcopy(policy),
                             reward_model=rm, value_model=copy.deepcopy(rm), train_dataset=ds, eval_dataset=ds.select(range(2)),
                             peft_config=_lora(mode).to_peft() if mode == "lora" else None)
        t = time.perf_counter(); trainer.train(); wall = time.perf_counter() - t
    return {"iteration_s": wall / a.iterations}


def one(spec: str, a) -> dict:
    impl, model, mode = spec.split(":")
    out = (run_ours if impl == "ours" else run_trl)(model, mode, a)
    return {"impl": impl, "model": model, "mode": mode, **out, "prompts_per_s": a.prompts / out["iteration_s"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def install_trl() -> str | None:
    "trl 1.12 into bench/.cache (no dependencies: ours serve); None when it is there, else why it is not."
    if (TRL_DIR / "trl" / "experimental" / "ppo" / "ppo_trainer.py").exists(): return None
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(TRL_DIR), "trl==1.12.0"],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"pip install trl==1.12.0 failed: {r.stderr.strip()[-500:]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--modes", default="", help="run only these of our modes (e.g. lora-adapter,lora-adapter-gc); TRL's always run")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # impl:model:mode, in a process of its own
    ap.add_argument("--out", default=str(HERE / "results" / "ppo_step.json"))
    a = ap.parse_args()
    if a.one:
        print("ROW " + json.dumps(one(a.one, a))); return
    why = install_trl()
    if why: print(f"TRL side skipped: {why}")
    specs = []
    for model in a.models.split(","):
        for mode in (("full", "lora") if model == "tiny" else ("lora",)):
            specs += [f"ours:{model}:{mode}"] + ([f"ours:{model}:lora-adapter", f"ours:{model}:lora-adapter-gc"] if mode == "lora" else []) + \
                     ([] if why else [f"trl:{model}:{mode}"])
    if a.modes: specs = [s for s in specs if s.startswith("trl:") or s.split(":")[2] in a.modes.split(",")]
    rows = []
    for spec in specs:
        r = subprocess.run([sys.executable, __file__, "--one", spec, "--iterations", str(a.iterations), "--prompts", str(a.prompts),
                            "--epochs", str(a.epochs)], capture_output=True, text=True)
        line = [l for l in r.stdout.splitlines() if l.startswith("ROW ")]
        if r.returncode or not line: raise SystemExit(f"{spec} failed:\n{r.stderr[-3000:]}")
        rows.append(json.loads(line[0][4:])); print(spec, "done", flush=True)
    for r in rows:  # ours against TRL on the same model and mode
        mode = "lora" if r["mode"].startswith("lora") else r["mode"]  # our adapter critic (with or without checkpointing) against TRL's LoRA run
        other = next((o for o in rows if o["impl"] == "trl" and o["model"] == r["model"] and o["mode"] == mode), None)
        if r["impl"] == "ours" and other:
            r["speedup_vs_trl"] = other["iteration_s"] / r["iteration_s"]; r["rss_vs_trl"] = r["peak_rss_mb"] / other["peak_rss_mb"]
    cols = ["impl", "model", "mode", "iteration_s", *PHASES, "prompts_per_s", "peak_rss_mb", "speedup_vs_trl", "rss_vs_trl"]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))
    print(" | ".join(cols)); print(" | ".join("---" for _ in cols))
    for r in rows: print(" | ".join(fmt(r.get(c)) for c in cols))
    import torch
    from selfalign.core.base import atomic_write_json, env_info
    atomic_write_json(a.out, {"rows": rows, "env": env_info(), "threads": torch.get_num_threads(), "iterations": a.iterations,
                              "prompts": a.prompts, "epochs": a.epochs, "trl": "1.12.0" if not why else why,
                              "note": "iteration_s = training wall / iterations, first iteration included, for both; one process per row"})


if __name__ == "__main__":
    main()
