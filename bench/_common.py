"""What the benches share: best-of-N timing and the JSON they write (rows plus the machine's state: threads, CPU,
1-minute load average at start and end, Python, packages, git)."""
import os
import platform
import time

import torch

from selfalign.core.base import atomic_write_json, env_info


def loadavg():
    "The 1-minute load average (None where the OS has none)."
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def timed(fn, repeats):
    "(best wall seconds of `repeats` calls of `fn`, the last call's result)."
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t0)
    return best, out


def write_results(out, bench: str, rows: list, load0, **fields) -> None:
    "Write `rows` and `fields` to `out` with the machine's state; `load0` is `loadavg()` at the bench's start."
    atomic_write_json(out, {"bench": bench, **fields, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                            "loadavg_1m": {"start": load0, "end": loadavg()}, "rows": rows,
                            "env": {k: env_info()[k] for k in ("python", "packages", "git")}})
    print(f"\nwrote {out}")
