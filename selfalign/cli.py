"""The `selfalign` command: run paper reproductions with papermill.

    selfalign reproduce <paper|all> --scale tiny|small|paper --out DIR [-c CONFIG] [-f params.yaml ...] [-p NAME VALUE ...]
    selfalign world build [--out DIR] [--seed N] [--config build.json] [--force]

A paper is a folder `papers/<paper>/` holding a parameterised notebook (`reproduce.ipynb` unless a config names
another) and `configs/<artefact>.yaml`, one file per paper artefact (`table2.yaml`, `fig3.yaml`). Each config is run
into `DIR/<paper>/<artefact>/`, which receives the executed notebook and everything the notebook writes there
(`config.json`, `env.json`, `metrics.json`, figures). Parameters are layered, later wins: the notebook's defaults,
the config file, its `by_scale:` section for the chosen scale, each `-f` file in order, then each `-p`.

`selfalign world ...` manages the miniature world: `world build` trains its tokenizer, base models and SFT model
(`selfalign.world.models.build_world`) into `selfalign/assets/world/` unless `--out` says otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

RESERVED = {"notebook", "by_scale", "description"}  # config keys that are not notebook parameters
SCALES = ("tiny", "small", "paper")


class ReproduceError(Exception):
    "A problem with the command line, a paper folder or a config file, reported without a traceback."


def papers_dir() -> Path:
    "Where paper folders live: `$SELFALIGN_PAPERS`, else the repository's `papers/`."
    env = os.environ.get("SELFALIGN_PAPERS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "papers"


def list_papers(root: Path) -> list[str]:
    "Paper folders under `root` (those starting with `_` are templates)."
    if not root.is_dir(): return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "configs").is_dir())


def _load_yaml(path: Path) -> dict:
    try: data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError: raise ReproduceError(f"{path}: no such file") from None
    except UnicodeDecodeError as e: raise ReproduceError(f"{path}: not UTF-8 text ({e.reason})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ReproduceError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None: return {}
    if not isinstance(data, dict): raise ReproduceError(f"{path}: expected a mapping of parameter names to values")
    return data


def _parse_value(text: str):
    "A `-p` value read as a YAML scalar: `0.3` → float, `true` → bool, `[1, 2]` → list, else the string."
    try: return yaml.safe_load(text)
    except yaml.YAMLError: return text


@dataclass
class Job:
    "One notebook run: a paper's config at one scale."
    paper: str
    config: str
    notebook: Path
    out_dir: Path
    parameters: dict = field(default_factory=dict)


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list,), "dict": (dict,)}


def _check_parameters(notebook: Path, params: dict, where: str) -> None:
    "Reject names the notebook does not declare and values of the wrong type, before anything runs."
    import papermill as pm
    declared = pm.inspect_notebook(str(notebook))
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ReproduceError(f"{where}: unknown parameter(s) {unknown} for {notebook}; it declares: {sorted(declared)}")
    for k, v in params.items():
        tname = (declared[k].get("inferred_type_name") or "").replace("None", "").strip(" |")
        ok = _TYPES.get(tname)
        if ok and v is not None and (not isinstance(v, ok) or (tname != "bool" and isinstance(v, bool))):
            raise ReproduceError(f"{where}: parameter '{k}' should be {tname}, got {v!r}")


def plan(paper: str, scale: str, out: Path, configs: list[str] | None = None, files: list[Path] = (),
         overrides: dict | None = None, root: Path | None = None) -> list[Job]:
    "The notebook runs that `selfalign reproduce` would make, with parameters resolved and checked."
    root = root or papers_dir()
    available = list_papers(root)
    if paper == "all":
        papers = [p for p in available if not p.startswith("_")] or [p for p in available if p == "_template"]
    elif paper in available: papers = [paper]
    else: raise ReproduceError(f"unknown paper {paper!r}; available: {', '.join(available) or '(none)'} (in {root})")
    extra = {}
    for f in files: extra.update(_load_yaml(Path(f)))
    extra.update(overrides or {})
    jobs = []
    for name in papers:
        cfg_dir = root / name / "configs"
        found = {p.stem: p for p in sorted(cfg_dir.glob("*.yaml"))}
        wanted = configs or sorted(found)
        missing = [c for c in wanted if c not in found]
        if missing and paper != "all":
            raise ReproduceError(f"{name}: no config(s) {missing}; available: {sorted(found)}")
        for c in (c for c in wanted if c in found):
            data = _load_yaml(found[c])
            nb = root / name / data.get("notebook", "reproduce.ipynb")
            if not nb.exists(): raise ReproduceError(f"{found[c]}: notebook {nb.name} not found in {nb.parent}")
            by_scale = data.get("by_scale") or {}
            if not isinstance(by_scale, dict) or not all(isinstance(v, dict) for v in by_scale.values()):
                raise ReproduceError(f"{found[c]}: 'by_scale' must map a scale name to parameters")
            params = {k: v for k, v in data.items() if k not in RESERVED}
            params.update(by_scale.get(scale) or {})
            params.update(extra)
            run_dir = out / name / c
            params.update(scale=scale, config=c, out_dir=str(run_dir.resolve()))
            _check_parameters(nb, params, str(found[c]))
            jobs.append(Job(name, c, nb, run_dir, params))
    if not jobs: raise ReproduceError(f"nothing to run for {paper!r} with configs {configs}")
    return jobs


def run_job(job: Job, kernel: str | None = None, progress: bool = False) -> tuple[bool, float, str]:
    "Execute one job with papermill; return (succeeded, seconds, error text)."
    import papermill as pm
    job.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(job.notebook), str(job.out_dir / job.notebook.name), parameters=job.parameters,
                            kernel_name=kernel, cwd=str(job.notebook.parent), progress_bar=progress,
                            request_save_on_cell_execute=True)
        return True, time.perf_counter() - t0, ""
    except pm.PapermillExecutionError as e:
        return False, time.perf_counter() - t0, f"{e.ename}: {e.evalue}"
    except Exception as e:  # kernel died, notebook unreadable, ...
        return False, time.perf_counter() - t0, f"{type(e).__name__}: {e}"


def reproduce(args) -> int:
    overrides = {k: _parse_value(v) for k, v in (args.param or [])}
    jobs = plan(args.paper, args.scale, Path(args.out), args.config, [Path(f) for f in args.file or []], overrides)
    from .report import RunRecord, write_report
    tty = sys.stderr.isatty()
    failed, records = [], []
    for i, job in enumerate(jobs, 1):
        label = f"[{i}/{len(jobs)}] {job.paper}/{job.config} ({args.scale})"
        if tty: print(f"{label} running …", file=sys.stderr, flush=True)
        ok, secs, err = run_job(job, kernel=args.kernel, progress=tty)
        status = "ok" if ok else "FAILED"
        print(f"{label} {status} in {secs:.1f}s → {job.out_dir}", file=sys.stderr, flush=True)
        records.append(RunRecord(job.paper, job.config, args.scale, job.out_dir, ok, secs,
                                 err.splitlines()[0] if err else "", job.notebook.name))
        if not ok:
            failed.append(job)
            print(f"    {err.splitlines()[0] if err else ''}\n    executed copy kept: {job.out_dir / job.notebook.name}",
                  file=sys.stderr)
    md, page = write_report(args.out, records)
    print(f"outputs: {Path(args.out).resolve()}")
    print(f"report: {md}  (and {page.name}: open it in a browser)")
    if failed:
        print(f"{len(failed)} of {len(jobs)} notebook(s) failed: " + ", ".join(f"{j.paper}/{j.config}" for j in failed),
              file=sys.stderr)
        return 1
    return 0


class _BuildProgress:
    "Stage progress of `world build` on stderr: a tqdm bar per stage on a terminal, else a few plain lines."
    def __init__(self, tty: bool):
        self.tty, self.bar, self.next_pct = tty, None, 0

    def __call__(self, e: dict) -> None:
        stage, event = e["stage"], e["event"]
        if event == "start":
            self.next_pct = 0
            if not self.tty: print(f"[{stage}] …", file=sys.stderr, flush=True)
        elif event == "step":
            if self.tty:
                if self.bar is None:
                    from tqdm import tqdm
                    self.bar = tqdm(total=e["max_steps"], desc=stage, unit="step", file=sys.stderr, leave=False)
                self.bar.n = e["step"]; self.bar.set_postfix(loss=f"{e['loss']:.3f}")
            elif 100 * e["step"] >= self.next_pct * e["max_steps"]:
                print(f"[{stage}] step {e['step']}/{e['max_steps']} loss {e['loss']:.4f}", file=sys.stderr, flush=True)
                self.next_pct = 100 * e["step"] // e["max_steps"] + 10
        elif event == "done":
            if self.bar is not None: self.bar.close(); self.bar = None
            print(f"[{stage}] done in {e['seconds']:.1f}s", file=sys.stderr, flush=True)


def world_build(args) -> int:
    "`selfalign world build`: train the world's models (or find them already built) and say where they are."
    from transformers.utils import logging as hf_logging
    from .core.base import ConfigError
    from .world.models import WorldBuildConfig, build_world, default_world_dir
    hf_logging.disable_progress_bar()
    try: cfg = WorldBuildConfig.from_json(args.config) if args.config else WorldBuildConfig()
    except (ConfigError, OSError, ValueError) as e: raise ReproduceError(str(e)) from None
    if args.seed is not None: cfg = cfg.replace(seed=args.seed)
    out = Path(args.out) if args.out else default_world_dir()
    rec = build_world(cfg, out, progress=_BuildProgress(sys.stderr.isatty()), force=args.force)
    if rec["cached"]:
        print(f"{out.resolve()} already holds this build (config {rec['config_hash']}); --force rebuilds it")
    else:
        losses = ", ".join(f"{k} {v['final_loss']:.3f}" for k, v in rec["stages"].items())
        print(f"built the world's models in {rec['seconds']['total']:.0f}s (final losses: {losses})")
        print(f"wrote {out.resolve()}")
    return 0


def world_report_cmd(args) -> int:
    "`selfalign world report`: measure the premises, print them against their targets, say where the files are."
    from .world.report import ReportConfig, world_report
    try:
        r = world_report(ReportConfig(world_dir=args.world, n_prompts=args.prompts, n_pairs=args.pairs, seed=args.seed),
                         args.out)
    except FileNotFoundError as e:
        raise ReproduceError(str(e)) from None
    for t in r["targets"]:
        value = "n/a" if t["value"] is None else f"{t['value']:.3f}"
        print(f"  {'ok  ' if t['holds'] else 'MISS'} {t['statement']:<62} {value}")
    print(f"report: {Path(args.out).resolve() / 'world_report.json'}")
    return 0


LAUNCH_HELP = """\
launcher parameters (every band; set with -p NAME VALUE or in a -f file):
  launcher           inprocess (default) | accelerate: each training stage a process, or several under accelerate launch
  num_processes      ranks per training stage, one per GPU (default 1); the global batch stays batch_size
  engine             ddp (default) | zero2 | zero3 (DeepSpeed) | fsdp2 (GPUs only)
  mixed_precision    no (default) | bf16 | fp16
  accelerate_config  your own accelerate YAML (default: selfalign/configs/accelerate/<engine>.yaml)
  deepspeed_config   your own DeepSpeed JSON (default: selfalign/configs/deepspeed/<engine>.json)
  report_to          none (default) | tensorboard | wandb: training metrics of every stage, rank 0 only

examples:
  selfalign reproduce dpo --scale tiny -p launcher accelerate -p num_processes 2
  selfalign reproduce dpo --scale paper -f papers/dpo/overlays/qlora.yaml                      # one GPU, QLoRA
  selfalign reproduce dpo --scale paper -p launcher accelerate -p num_processes 8 -p engine zero3   # 8 GPUs
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="selfalign", description="Reproduce LLM self-alignment papers: DPO, DLMA, "
                                 "ALMoST, Self-Contrast and SALMON, at the tiny, small or paper scale.")
    from . import __version__
    ap.add_argument("--version", action="version", version=f"selfalign {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reproduce", help="run a paper's reproduction notebooks with papermill",
                       description="Run papers/<paper>/ notebooks into OUT/<paper>/<config>/.",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=LAUNCH_HELP)
    r.add_argument("paper", help="a paper folder name, or 'all'")
    r.add_argument("--scale", choices=SCALES, default="tiny", help="tiny (CPU minutes), small (SmolLM2), paper")
    r.add_argument("--out", default="runs", help="output folder (default: runs)")
    r.add_argument("-c", "--config", action="append", help="run only this config (repeatable; default: all)")
    r.add_argument("-f", "--file", action="append", help="YAML file of parameters (repeatable, later wins)")
    r.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set one parameter (repeatable; VALUE read as YAML)")
    r.add_argument("--kernel", default=None, help="Jupyter kernel (default: the notebook's)")
    r.set_defaults(func=reproduce)

    w = sub.add_parser("world", help="build (and inspect) the miniature world's models",
                       description="The miniature world: its tokenizer, base models and SFT model.")
    wsub = w.add_subparsers(dest="world_command", required=True)
    b = wsub.add_parser("build", help="train the world's tokenizer, base-small, base-large and sft models",
                        description="Train the world's models (about a quarter of an hour on 2 CPU cores) into OUT; "
                                    "an OUT that already holds the same build is left as it is.")
    b.add_argument("--out", default=None, help="output folder (default: selfalign/assets/world in the package)")
    b.add_argument("--seed", type=int, default=None, help="the build's one seed (default: the config's, 0)")
    b.add_argument("--config", default=None, help="JSON file of WorldBuildConfig fields (default: the built-in recipe)")
    b.add_argument("--force", action="store_true", help="rebuild even if OUT already holds this build")
    b.set_defaults(func=world_build)
    rp = wsub.add_parser("report", help="measure the world's premises with the oracle (world_report.json + figure)",
                         description="Sample the world's models on held-out prompts and measure the premises the "
                                     "methods need against their targets.")
    rp.add_argument("--out", default="world_report", help="output folder (default: world_report)")
    rp.add_argument("--world", default=None, help="a build folder (default: the committed artefacts)")
    rp.add_argument("--prompts", type=int, default=600, help="held-out prompts per sampled configuration")
    rp.add_argument("--pairs", type=int, default=400, help="judging and contrastive pairs")
    rp.add_argument("--seed", type=int, default=0)
    rp.set_defaults(func=world_report_cmd)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try: return args.func(args)
    except ReproduceError as e:
        print(f"selfalign: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
