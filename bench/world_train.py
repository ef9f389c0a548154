"""Training throughput of the miniature world's models: base-small and base-large pretraining, fp32 vs bf16 autocast,
plus SFT of the large shape, with the default `WorldBuildConfig` batch shapes.

Each row times `--steps` optimiser steps (after a short untimed warm-up on a separate model) and checks determinism:
a second short run from the same seed must give bit-identical losses. Tokens/s counts real tokens (SFT padding
excluded). The last column projects the default build's step budget at the measured speed. Prints a table and writes
bench/results/world_train.json.

    python bench/world_train.py [--steps 30] [--n-docs 3000]
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import importlib
import platform
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from selfalign.core.base import atomic_write_json, env_info
from selfalign.world.models import WorldBuildConfig, init_world_model, world_tokenizer, pretrain, sft_train, world_data


def synthetic_data(n_docs: int):
    "Stand-in dialogues when `selfalign.world.base` has no corpus yet."
    import random
    from selfalign.data.records import SFTExample
    r = random.Random(0)
    qa = [(f"What is {a} plus {b}?", f" {a} plus {b} is {a + b}.") for a, b in
          ((r.randint(0, 999), r.randint(0, 999)) for _ in range(n_docs))]
    return ([f"USER: {q}\nASSISTANT (helpful):{a} I hope this helps with your sums today." for q, a in qa],
            [SFTExample(prompt=f"USER: {q}\nASSISTANT:", response=a) for q, a in qa])


def load_data(cfg: WorldBuildConfig):
    try:
        mod = importlib.import_module(cfg.corpus)
        if hasattr(mod, "base_corpus") and hasattr(mod, "sft_examples"): return world_data(cfg), cfg.corpus
    except ImportError:
        pass
    return synthetic_data(cfg.n_docs), "synthetic"


def run(stage, shape, tc, tok, docs, sft, steps, seed):
    train = (lambda m, s: pretrain(m, tok, docs, tc, stop_after=s)) if stage != "sft" else \
            (lambda m, s: sft_train(m, tok, sft, tc, stop_after=s))
    train(init_world_model(shape, tok, seed), 2)  # warm-up: kernels, allocator
    h = train(init_world_model(shape, tok, seed), steps)
    again = train(init_world_model(shape, tok, seed), 3)
    params = sum(p.numel() for p in init_world_model(shape, tok, seed).parameters())
    tok_s = h["tokens"] / h["seconds"]
    return {"stage": stage, "params": params, "dtype": tc.dtype, "batch_size": tc.batch_size, "seq_len": tc.seq_len,
            "steps": steps, "tokens": h["tokens"], "wall_s": round(h["seconds"], 2), "tok_per_s": round(tok_s, 1),
            "s_per_step": round(h["seconds"] / steps, 4), "deterministic": again["losses"] == h["losses"][:3],
            "default_max_steps": tc.max_steps, "projected_s": round(tc.max_steps * h["seconds"] / steps, 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed optimiser steps per row")
    ap.add_argument("--n-docs", type=int, default=3000, help="corpus documents (enough for the timed steps)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "world_train.json"))
    a = ap.parse_args(argv)
    hf_logging.disable_progress_bar()
    cfg = WorldBuildConfig()
    (docs, sft), source = load_data(cfg.replace(n_docs=a.n_docs, n_sft=min(cfg.n_sft, a.n_docs)))
    tok = world_tokenizer(docs, cfg)
    load0 = os.getloadavg()[0]
    rows = []
    for stage, shape, tc in (("base-small", cfg.small, cfg.pretrain_small), ("base-large", cfg.large, cfg.pretrain_large),
                             ("sft", cfg.large, cfg.sft)):
        for dtype in ("fp32", "bf16"):
            r = run(stage, shape, tc.replace(dtype=dtype), tok, docs, sft, a.steps, cfg.seed)
            rows.append(r)
            print(f"  {stage:10s} {dtype:4s} {r['tok_per_s']:9.1f} tok/s  {r['s_per_step']:.3f} s/step", flush=True)
    print(f"\nWorld training throughput, corpus {source} (vocab {len(tok)}), {torch.get_num_threads()} threads, "
          f"{a.steps} timed steps per row")
    print("| stage      | params | batch x len | fp32 tok/s | bf16 tok/s | bf16/fp32 | deterministic | default steps | projected (bf16) |")
    print("|------------|-------:|------------:|-----------:|-----------:|----------:|:-------------:|--------------:|-----------------:|")
    for i in range(0, len(rows), 2):
        f, b = rows[i], rows[i + 1]
        print(f"| {f['stage']:10s} | {f['params'] / 1e6:5.2f}M | {f['batch_size']:4d} x {f['seq_len']:4d} | {f['tok_per_s']:10.0f} | "
              f"{b['tok_per_s']:10.0f} | {b['tok_per_s'] / f['tok_per_s']:8.2f}x | {str(f['deterministic'] and b['deterministic']):13s} | "
              f"{b['default_max_steps']:13d} | {b['projected_s']:14.0f} s |")
    atomic_write_json(a.out, {
        "bench": "world_train", "corpus": source, "vocab": len(tok), "steps": a.steps, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "loadavg_1m": {"start": load0, "end": os.getloadavg()[0]},
        "rows": rows, "env": {k: env_info()[k] for k in ("python", "packages", "git")}})
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
