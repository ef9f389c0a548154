"""Oracle throughput: judgements per second on rendered world responses and on garbled text.

Prints a table and writes bench/results/oracle.json. Target: >= 10k judgements/s on one core.
"""
import json
import random
import time
from pathlib import Path

from selfalign.world.base import BENIGN_BEHAVIOURS, HARMFUL_BEHAVIOURS, judge, parse_prompt, render_response, world_prompts


def _garble(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(max(1, len(chars) // 6)):
        i = rng.randrange(len(chars)); chars[i] = rng.choice("abcdefghijklmnopqrstuvwxyz ")
    return "".join(chars)


def main(n: int = 4000, repeats: int = 3):
    rng = random.Random(0)
    prompts = world_prompts(n, "test", seed=9)
    clean = [(p.text, render_response(p, rng.choice(HARMFUL_BEHAVIOURS if p.kind == "harmful" else BENIGN_BEHAVIOURS), rng))
             for p in prompts]
    garbled = [(q, _garble(r, rng)) for q, r in clean]
    rows = []
    for name, pairs in (("rendered responses", clean), ("garbled responses", garbled)):
        parse_prompt.cache_clear()
        t0 = time.perf_counter(); [judge(q, r) for q, r in pairs]; cold = len(pairs) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(repeats): [judge(q, r) for q, r in pairs]
        warm = repeats * len(pairs) / (time.perf_counter() - t0)
        rows.append({"input": name, "n": len(pairs), "judgements_per_s_cold": round(cold), "judgements_per_s_warm": round(warm)})
    print(f"{'input':<22}{'n':>6}{'cold /s':>12}{'warm /s':>12}")
    for r in rows: print(f"{r['input']:<22}{r['n']:>6}{r['judgements_per_s_cold']:>12}{r['judgements_per_s_warm']:>12}")
    out = Path(__file__).parent / "results" / "oracle.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"bench": "oracle", "rows": rows, "target_per_s": 10_000}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
