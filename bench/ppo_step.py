"""PPO iteration cost, split into rollout / reference (the rollout policy's and the reference's log-probs, the
critic's values) / scoring / training, with response tokens per second and peak memory (RSS), on the world's tiny SFT
model with full fine-tuning and with LoRA (reference = the disabled adapter: no second copy), rewarded by the oracle.

Not yet here: the side-by-side with the last TRL PPO (`trl.experimental.ppo.PPOTrainer`, trl 1.12) in a throwaway
venv, and SmolLM2-135M. Prints a table and writes bench/results/ppo_step.json.

    python bench/ppo_step.py [--iterations 4] [--prompts 32]
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import copy
import resource
import tempfile
from pathlib import Path

import torch

from selfalign.core.base import atomic_write_json, env_info
from selfalign.models.loader import LoraSpec, apply_lora
from selfalign.trainers.ppo import PPOStageConfig, run_ppo
from selfalign.world import base as W
from selfalign.world.models import load_world_model

PHASES = ("rollout_s", "reference_s", "scoring_s", "train_s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ppo_step.json"))
    a = ap.parse_args()
    sft, tok = load_world_model("sft")
    train = W.world_prompts(4 * a.prompts, "train", seed=11)
    ctx = {W.render_dialogue(p.text): p for p in train}
    oracle = lambda prompts, responses: [W.judge(ctx[p].text, r).reward for p, r in zip(prompts, responses)]
    rows = []
    for name, make in (("tiny-full", lambda: copy.deepcopy(sft)),
                       ("tiny-lora-r16", lambda: apply_lora(copy.deepcopy(sft), LoraSpec(r=16, alpha=32, dropout=0.0)))):
        with tempfile.TemporaryDirectory() as d:
            cfg = PPOStageConfig(output_dir=d, max_steps=a.iterations, rollout_prompts=a.prompts, ppo_epochs=4, mini_batches=2,
                                 learning_rate=2e-5, max_new_tokens=48, temperature=1.0, seed=0, lr_scheduler_type="constant")
            res = run_ppo(cfg, make(), tok, list(ctx), oracle)
        h = res.log_history[1:] or res.log_history  # the first iteration pays one-off costs
        secs = {k: sum(r[k] for r in h) / len(h) for k in PHASES}
        it_s, toks = sum(secs.values()), sum(r["tokens"] for r in h) / len(h)
        rows.append({"config": name, **{k: round(v, 3) for k, v in secs.items()}, "iteration_s": round(it_s, 3),
                     "response_tokens_per_s": round(toks / it_s, 1),
                     "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    cols = ["config", *PHASES, "iteration_s", "response_tokens_per_s", "peak_rss_mb"]
    print(" | ".join(cols)); print(" | ".join("---" for _ in cols))
    for r in rows: print(" | ".join(str(r[c]) for c in cols))
    atomic_write_json(a.out, {"rows": rows, "env": env_info(), "threads": torch.get_num_threads(),
                              "iterations": a.iterations, "prompts": a.prompts,
                              "note": "peak RSS is the process's high-water mark so far (the LoRA row follows the full one)"})


if __name__ == "__main__":
    main()
