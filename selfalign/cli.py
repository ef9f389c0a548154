"""The `selfalign` command: run paper reproductions with papermill.

    selfalign reproduce <paper|all> --scale tiny|small|paper --out DIR [-c CONFIG] [-f params.yaml ...] [-p NAME VALUE ...] [--jobs N|auto]
    selfalign world build [--out DIR] [--seed N] [--config build.json] [--force]
    selfalign serve smollm2|FOLDER [--port N] [--name NAME] [--api-key-env VAR]

A paper is a folder `papers/<paper>/` holding a parameterised notebook (`reproduce.ipynb` unless a config names
another) and `configs/<artefact>.yaml`, one file per paper artefact (`table2.yaml`, `fig3.yaml`). Each config is run
into `DIR/<paper>/<artefact>/`, which receives the executed notebook and everything the notebook writes there
(`config.json`, `env.json`, `metrics.json`, figures). Parameters are layered, later wins: the notebook's defaults,
the config file, its `by_scale:` section for the chosen scale, each `-f` file in order, then each `-p`. YAML is read
strictly: a key given twice is an error, and `1e-4`, `1E5`, `.5` and `inf` are numbers (as in YAML 1.2).

A run folder says which run it holds. Before a notebook starts, the previous run's top-level outputs there
(`metrics.json`, `config.json`, `env.json`, figures, the executed notebook, a report) are removed and `INCOMPLETE.json`
(the command, the start time, then the status) is written; it is removed when the notebook succeeds and stays, saying
`failed` or `interrupted`, when it does not. Subfolders (trained checkpoints a resumed run can use) are kept.

`--jobs N` runs N papers at once (`auto`: one per CPU core at `tiny`), each kernel with its share of the cores as
threads; a paper's configs run one after another (the later ones reuse the data and rows the first built); the report
lists the runs in plan order whatever order they finished in.

Ctrl-C stops the running notebooks at their current cells (a second Ctrl-C stops at once), skips the notebooks not yet
started, writes the report for what ran, the interrupted notebooks marked as such, and exits with status 130.

`selfalign serve` serves a local model over vLLM's OpenAI-compatible API on 127.0.0.1 until Ctrl-C: an LLM judge for
`reproduce … -p judge llm`, requiring the key the environment variable `--api-key-env` holds (it prints the parameters
that point a run at it, never the key).

`selfalign world ...` manages the miniature world: `world build` trains its tokenizer, base models and SFT model
(`selfalign.world.models.build_world`) into `selfalign/assets/world/` unless `--out` says otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import yaml

RESERVED = {"notebook", "by_scale", "description"}  # config keys that are not notebook parameters
SCALES = ("tiny", "small", "paper")
CLI_OWNED = {"scale": "the scale with --scale", "config": "configs with -c", "out_dir": "the output folder with --out"}
STALE = ("metrics.json", "config.json", "env.json", "REPORT.md", "report.html", "*.png")  # a previous run's outputs
MARKER = "INCOMPLETE.json"


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


class StrictLoader(yaml.SafeLoader):
    "YAML for parameters: a mapping key given twice is an error; `1e-4`, `1E5`, `inf`, `nan` are floats (YAML 1.2)."
    def construct_mapping(self, node, deep=False):
        seen = {}
        for k, _ in node.value:
            if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge": continue
            key = self.construct_object(k)
            if key in seen:
                problem = f"duplicate key {key!r} (first on line {seen[key] + 1})"
                raise yaml.constructor.ConstructorError(None, None, problem, k.start_mark)
            seen[key] = k.start_mark.line
        return super().construct_mapping(node, deep)


StrictLoader.add_implicit_resolver(  # after YAML 1.1's resolvers: only what they leave a string becomes a float
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+|inf|infinity|nan)$", re.I),
    list("-+0123456789.iInN"))


def _load_yaml(path: Path) -> dict:
    try: data = yaml.load(path.read_text(encoding="utf-8"), Loader=StrictLoader)
    except FileNotFoundError: raise ReproduceError(f"{path}: no such file") from None
    except IsADirectoryError: raise ReproduceError(f"{path}: is a folder, not a YAML file") from None
    except UnicodeDecodeError as e: raise ReproduceError(f"{path}: not UTF-8 text ({e.reason})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ReproduceError(f"{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None: return {}
    if not isinstance(data, dict): raise ReproduceError(f"{path}: expected a mapping of parameter names to values")
    return data


def _parse_value(text: str):
    "A `-p` value read as a YAML scalar: `0.3`, `1e-4` → float, `true` → bool, `[1, 2]` → list, else the string."
    try: return yaml.load(text, Loader=StrictLoader)
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


def _check_parameters(notebook: Path, params: dict, origin: dict) -> None:
    "Reject names the notebook does not declare and values of the wrong type, naming where each was set."
    import papermill as pm
    try: declared = pm.inspect_notebook(str(notebook))
    except Exception as e:  # not JSON, not a notebook, ...
        raise ReproduceError(f"{notebook}: not a readable notebook ({str(e).strip().splitlines()[0][:200]})") from None
    unknown = [k for k in params if k not in declared]
    if unknown:
        where = origin[unknown[0]]
        raise ReproduceError(f"{where}: unknown parameter(s) {sorted(k for k in unknown if origin[k] == where)} for "
                             f"{notebook}; it declares: {sorted(declared)}")
    for k, v in params.items():
        tname = (declared[k].get("inferred_type_name") or "").replace("None", "").strip(" |")
        ok = _TYPES.get(tname)
        if ok and v is not None and (not isinstance(v, ok) or (tname != "bool" and isinstance(v, bool))):
            raise ReproduceError(f"{origin[k]}: parameter '{k}' should be {tname}, got {v!r}")


def _layer(params: dict, origin: dict, data: dict, where) -> None:
    "Add `data` to `params`, recording where each came from; `where` is a string or a function of the name."
    for k, v in data.items():
        at = where(k) if callable(where) else where
        if k in CLI_OWNED: raise ReproduceError(f"{at}: '{k}' is set by the command line; choose {CLI_OWNED[k]}")
        params[k], origin[k] = v, at


def plan(paper: str, scale: str, out: Path, configs: list[str] | None = None, files: list[Path] = (),
         overrides: dict | None = None, root: Path | None = None) -> list[Job]:
    "The notebook runs that `selfalign reproduce` would make, with parameters resolved and checked."
    root = root or papers_dir()
    available = list_papers(root)
    if paper == "all":
        papers = [p for p in available if not p.startswith("_")] or [p for p in available if p == "_template"]
    elif paper in available: papers = [paper]
    else: raise ReproduceError(f"unknown paper {paper!r}; available: {', '.join(available) or '(none)'} (in {root})")
    extra, extra_origin = {}, {}
    for f in files: _layer(extra, extra_origin, _load_yaml(Path(f)), str(f))
    _layer(extra, extra_origin, overrides or {}, lambda k: f"-p {k}")
    jobs = []
    for name in papers:
        cfg_dir = root / name / "configs"
        found = {p.stem: p for p in sorted(cfg_dir.glob("*.yaml"))}
        wanted = configs or sorted(found)
        missing = [c for c in wanted if c not in found]
        if missing and paper != "all":
            raise ReproduceError(f"{name}: no config(s) {missing}; available: {sorted(found)}")
        for c in (c for c in wanted if c in found):
            path = found[c]
            data = _load_yaml(path)
            nb_name = data.get("notebook", "reproduce.ipynb")
            if not isinstance(nb_name, str) or not nb_name.endswith(".ipynb"):
                raise ReproduceError(f"{path}: 'notebook' should name a notebook file (*.ipynb), got {nb_name!r}")
            by_scale = data.get("by_scale") or {}
            if not isinstance(by_scale, dict) or not all(isinstance(v, (dict, type(None))) for v in by_scale.values()):
                raise ReproduceError(f"{path}: 'by_scale' must map a scale name to parameters")
            typos = [k for k in by_scale if k not in SCALES]
            if typos: raise ReproduceError(f"{path}: by_scale has unknown scale(s) {typos}; scales: {', '.join(SCALES)}")
            nb = root / name / nb_name
            if not nb.is_file(): raise ReproduceError(f"{path}: notebook {nb.name} not found in {nb.parent}")
            params, origin = {}, {}
            _layer(params, origin, {k: v for k, v in data.items() if k not in RESERVED}, str(path))
            _layer(params, origin, by_scale.get(scale) or {}, f"{path} (by_scale: {scale})")
            params.update(extra); origin.update(extra_origin)
            if "seed" in extra and "seeds" not in extra and params.get("seeds"):  # a seed given alone runs alone
                params["seeds"], origin["seeds"] = [], f"{extra_origin['seed']} (that seed alone, not the config's seeds)"
            run_dir = out / name / c
            params.update(scale=scale, config=c, out_dir=str(run_dir.resolve()))
            origin.update(dict.fromkeys(CLI_OWNED, "selfalign (a paper notebook declares scale, config and out_dir)"))
            _check_parameters(nb, params, origin)
            jobs.append(Job(name, c, nb, run_dir, params))
    if not jobs: raise ReproduceError(f"nothing to run for {paper!r} with configs {configs}")
    return jobs


def check_out(out: Path, jobs: list[Job]) -> None:
    "Fail before anything runs when `out` cannot take the run folders: a file in the way, a folder not writable."
    for d in [out, *(j.out_dir for j in jobs)]:
        p = d.absolute()
        while not p.exists() and not p.is_symlink() and p != p.parent: p = p.parent  # the deepest that exists
        if not p.is_dir(): raise ReproduceError(f"--out {out}: {p} exists and is not a folder")
        try: tempfile.TemporaryFile(dir=p).close()
        except OSError as e: raise ReproduceError(f"--out {out}: cannot write in {p} ({e.strerror or e})") from None


def _start_run_folder(job: Job, command: str) -> None:
    "Remove a previous run's outputs from `job.out_dir` (keeping subfolders) and mark the folder incomplete."
    job.out_dir.mkdir(parents=True, exist_ok=True)
    for pattern in (*STALE, job.notebook.name):
        for p in job.out_dir.glob(pattern):
            if p.is_file() or p.is_symlink(): p.unlink()
    _mark(job, status="running", started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          command=command, pid=os.getpid())


def _mark(job: Job, **fields) -> None:
    "Write (or update) the run folder's `INCOMPLETE.json`."
    from .core.base import atomic_write_text
    p = job.out_dir / MARKER
    old = json.loads(p.read_text(encoding="utf-8")) if p.exists() and "started" not in fields else {}
    atomic_write_text(p, json.dumps({**old, **fields}, indent=1, ensure_ascii=False) + "\n")


_KERNELS: set = set()  # the kernel managers of the notebooks running now


@functools.cache
def _kernel_manager() -> type:
    "The kernel manager class papermill starts kernels with (made on first use: jupyter_client is slow to import)."
    from jupyter_client.manager import AsyncKernelManager, KernelManager

    class PrivateKernel(AsyncKernelManager):
        "A kernel on IPC sockets in a private temporary folder (else TCP): nothing on the network or in the cwd."
        async def _async_pre_start_kernel(self, **kw):
            self._private = tempfile.mkdtemp(prefix="selfalign-kernel-")
            self.connection_file = os.path.join(self._private, "kernel.json")
            if os.name == "posix" and len(self._private) < 90:  # a socket path has at most 104 bytes on macOS
                self.transport, self.ip = "ipc", os.path.join(self._private, "ipc")
            try: started = await super()._async_pre_start_kernel(**kw)
            except BaseException: shutil.rmtree(self._private, ignore_errors=True); raise  # e.g. no such kernel
            _KERNELS.add(self)
            return started

        async def _async_interrupt_kernel(self) -> None:
            "Called only by shutdown, which papermill does once the notebook stopped: a SIGINT then only races the "
            "kernel's last replies and logs 'KeyboardInterrupt caught in kernel'. Ctrl-C interrupts with `signal_now`."

        async def cleanup_resources(self, restart: bool = False) -> None:
            await KernelManager._async_cleanup_resources(self, restart)
            if not restart and hasattr(self, "_private"):
                shutil.rmtree(self._private, ignore_errors=True); _KERNELS.discard(self)

        def signal_now(self, signum: int) -> bool:
            "Send `signum` to the kernel's process group from synchronous code (a signal handler); False if none runs."
            pid = getattr(self.provisioner, "pid", None)
            if pid is None or os.name != "posix": return False
            try: os.killpg(os.getpgid(pid), signum); return True
            except OSError: return False
    return PrivateKernel


class _Interrupt:
    """Ctrl-C during `reproduce`: the first interrupts the running kernel (its cell raises KeyboardInterrupt, the notebook
    stops and is saved as failed there); a second kills the kernel and, like one when no kernel runs, stops at once."""
    def __init__(self): self.requested = False

    def __call__(self, signum, frame):
        if self.requested:
            for km in list(_KERNELS): km.signal_now(signal.SIGKILL)
            raise KeyboardInterrupt
        self.requested = True
        if not any([km.signal_now(signal.SIGINT) for km in list(_KERNELS)]): raise KeyboardInterrupt

    def before_cell(self, **_):
        "nbclient's `on_cell_start` hook: run no further cell once interrupted."
        if self.requested:
            from nbclient.exceptions import CellExecutionError
            raise CellExecutionError("KeyboardInterrupt: interrupted before this cell ran", "KeyboardInterrupt", "")


def _mark_notebook_interrupted(path: Path) -> None:
    "Make the kept notebook's papermill metadata say so: the cell that was running failed, the later ones did not run."
    import nbformat
    if not path.is_file(): return
    try: nb = nbformat.read(path, as_version=4)
    except Exception: return
    meta = nb.metadata.setdefault("papermill", {})
    meta["exception"], meta["status"] = True, "interrupted"
    cells = [c.metadata.get("papermill") for c in nb.cells if isinstance(c.metadata.get("papermill"), dict)]
    started = [m for m in cells if m.get("start_time")]
    for m in cells:
        if not m.get("start_time"): m["status"] = "pending"
    if started and started[-1].get("status") != "failed": started[-1].update(status="failed", exception=True)
    nbformat.write(nb, path)


def run_job(job: Job, kernel: str | None = None, progress: bool = False, on_cell_start=None) -> tuple[bool, float, str]:
    "Execute one job with papermill; return (succeeded, seconds, error text)."
    import papermill as pm
    t0 = time.perf_counter()
    try:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        pm.execute_notebook(str(job.notebook), str(job.out_dir / job.notebook.name), parameters=job.parameters,
                            kernel_name=kernel, cwd=str(job.notebook.parent), progress_bar=progress,
                            request_save_on_cell_execute=True, kernel_manager_class=_kernel_manager(),
                            **({"on_cell_start": on_cell_start} if on_cell_start else {}))
        return True, time.perf_counter() - t0, ""
    except pm.PapermillExecutionError as e:
        return False, time.perf_counter() - t0, f"{e.ename}: {e.evalue}"
    except Exception as e:  # kernel died, notebook unreadable, ...
        return False, time.perf_counter() - t0, f"{type(e).__name__}: {e}"


def parallel_jobs(requested: str | int, scale: str, n_jobs: int) -> int:
    """How many papers `--jobs` runs at once (`n_jobs` of them to run): a number, or `auto` — at `tiny`, one per CPU core
    (else one). One thread each: a second paper pays more than a second thread on models this small (on 2 cores, DPO and
    ALMoST at the tests' size took 83 s side by side on one thread each against 152 s one after the other on two threads;
    at the tiny size a DPO row took 53-55 s side by side against 36-40 s alone on two threads: 1.4x the rows a second)."""
    if str(requested) == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(n_jobs, cores)) if scale == "tiny" else 1
    try: n = int(requested)
    except ValueError: n = 0
    if n < 1: raise ReproduceError(f"--jobs {requested}: give a number ≥ 1 or 'auto'")
    return min(n, n_jobs)


def _thread_env(parallel: int) -> None:
    """With several notebooks at once, each kernel (started from this environment) gets its share of the cores as
    threads, unless the user set the thread counts: oversubscribed torch thread pools make everything crawl."""
    if parallel < 2: return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"): os.environ.setdefault(var, str(max(1, cores // parallel)))


def reproduce(args) -> int:
    overrides = {k: _parse_value(v) for k, v in (args.param or [])}
    out = Path(args.out)
    jobs = plan(args.paper, args.scale, out, args.config, [Path(f) for f in args.file or []], overrides)
    check_out(out, jobs)
    chains: dict[str, list[int]] = {}  # paper -> its jobs' indices: one paper's configs run in order, in one worker
    for i, job in enumerate(jobs): chains.setdefault(job.paper, []).append(i)
    parallel = parallel_jobs(args.jobs, args.scale, len(chains))
    _thread_env(parallel)
    from .report import RunRecord, write_report
    command = shlex.join(["selfalign", *args.argv])
    for stale in ("REPORT.md", "report.html"): (out / stale).unlink(missing_ok=True)  # rewritten when the run ends
    tty = sys.stderr.isatty()
    stop = _Interrupt()
    catch = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) != signal.SIG_IGN
    previous = signal.signal(signal.SIGINT, stop) if catch else None
    records: dict[int, RunRecord] = {}  # job index -> its record, for the jobs that started

    def run_one(i: int, job: Job) -> None:
        if stop.requested: return  # never started: reported as not run
        label = f"[{i + 1}/{len(jobs)}] {job.paper}/{job.config} ({args.scale})"
        t0 = time.perf_counter()
        try:
            _start_run_folder(job, command)
            if tty or parallel > 1: print(f"{label} running …", file=sys.stderr, flush=True)
            ok, secs, err = run_job(job, kernel=args.kernel, progress=tty and parallel == 1, on_cell_start=stop.before_cell)
        except KeyboardInterrupt:  # a second Ctrl-C, or one before the kernel ran
            ok, secs, err = False, time.perf_counter() - t0, ""
        except OSError as e:  # the run folder could not be prepared
            ok, secs, err = False, time.perf_counter() - t0, f"{type(e).__name__}: {e}"
        status = "ok" if ok else "interrupted" if stop.requested else "failed"
        lines = [f"{label} {status if ok else status.upper()} in {secs:.1f}s → {job.out_dir}"]
        nb_copy = job.out_dir / job.notebook.name
        if status == "interrupted":
            err = "KeyboardInterrupt: interrupted (Ctrl-C)"; _mark_notebook_interrupted(nb_copy)
        if status == "ok": (job.out_dir / MARKER).unlink(missing_ok=True)
        else:
            if (job.out_dir / MARKER).exists():
                _mark(job, status=status, error=err.splitlines()[0] if err else "",
                      ended=datetime.datetime.now().astimezone().isoformat(timespec="seconds"))
            if status == "failed" and err: lines.append(f"    {err.splitlines()[0]}")
            if nb_copy.exists(): lines.append(f"    executed copy kept: {nb_copy}")
        print("\n".join(lines), file=sys.stderr, flush=True)
        records[i] = RunRecord(job.paper, job.config, args.scale, job.out_dir, status, secs,
                               err.splitlines()[0] if err else "", job.notebook.name)

    # Worker threads run the notebooks (each in its own kernel process); the main thread only waits, so that Ctrl-C
    # reaches `stop` here whatever the workers are doing.
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="reproduce")
    def run_chain(indices: list[int]) -> None:
        for i in indices: run_one(i, jobs[i])

    pending = {pool.submit(run_chain, c) for c in chains.values()}
    try:
        while pending:
            try:
                done, pending = wait(pending, timeout=0.2)
                for f in done: f.result()
            except KeyboardInterrupt:  # between two notebooks, or a second Ctrl-C: the workers see `stop` and end
                stop.requested = True
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if catch: signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
    ran = [records[i] for i in sorted(records)]
    not_run = [f"{j.paper}/{j.config}" for i, j in enumerate(jobs) if i not in records]
    md, page = write_report(out, ran, not_run=not_run)
    print(f"outputs: {out.resolve()}")
    print(f"report: {md}  (and {page.name}: open it in a browser)")
    if stop.requested:
        stopped = [f"{r.paper}/{r.config}" for r in ran if r.status == "interrupted"]
        during = f" during {', '.join(stopped)}" if stopped else ""
        done = sum(r.status != "interrupted" for r in ran)
        print(f"selfalign: interrupted{during}; {done} of {len(jobs)} notebook(s) finished"
              + (f", not run: {', '.join(not_run)}" if not_run else ""), file=sys.stderr)
        return 130
    failed = [r for r in ran if r.status != "ok"]
    if failed:
        print(f"{len(failed)} of {len(jobs)} notebook(s) failed: " + ", ".join(f"{r.paper}/{r.config}" for r in failed),
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


def serve(args) -> int:
    "Serve a model over vLLM's OpenAI-compatible API on 127.0.0.1 until Ctrl-C (a local LLM judge); print how a run uses it."
    from .generate.vllm import VLLMServer, VLLMServerError, default_vllm_python
    key = os.environ.get(args.api_key_env)
    if not key:
        raise ReproduceError(f"${args.api_key_env} is not set: set it to a secret of your choice; the server requires it and a run "
                             f"passes it with -p judge_api_key_env {args.api_key_env}")
    if not default_vllm_python().exists():
        raise ReproduceError(f"no vLLM environment at {default_vllm_python()}: run `make install-vllm`")
    if args.model == "smollm2":
        from .models.loader import smollm2_dir
        folder, name = smollm2_dir(), args.name or "smollm2"
    else:
        folder = Path(args.model).expanduser()
        if not (folder / "config.json").is_file():
            raise ReproduceError(f"{folder}: not a model folder (no config.json); give 'smollm2' or a folder with config, safetensors and tokenizer")
        name = args.name or folder.name
    print(f"starting vLLM on {folder} (the first start takes a minute or two) ...", file=sys.stderr, flush=True)
    try: server = VLLMServer(folder, dtype=args.dtype, port=args.port, api_key=key, served_name=name, max_model_len=args.max_model_len)
    except (VLLMServerError, TimeoutError, OSError) as e: raise ReproduceError(str(e)) from None
    print(f"serving {name!r} at {server.url}/v1 (pid {server.pid}; log: {server.log_path}); Ctrl-C stops it. A run judged by it:\n"
          f"  selfalign reproduce PAPER ... -p judge llm -p judge_model {name} -p judge_base_url {server.url}/v1 "
          f"-p judge_api_key_env {args.api_key_env}", flush=True)
    def stop(*_): raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)  # `kill` stops it as Ctrl-C does (a background job ignores SIGINT)
    try:
        while server.running(): time.sleep(1)
        print(f"selfalign: error: the server exited (log: {server.log_path})", file=sys.stderr); return 1
    except KeyboardInterrupt: return 0
    finally: server.stop()


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
                   help="set one parameter (repeatable; VALUE read as YAML: 1e-4 is a number, [1, 2] a list)")
    r.add_argument("-j", "--jobs", default="1", metavar="N",
                   help="papers run at once (a paper's configs one after another): a number, or 'auto' (at tiny, one per "
                        "CPU core, each kernel with its share of the cores as threads; else 1). Default 1")
    r.add_argument("--kernel", default=None, help="Jupyter kernel (default: the notebook's)")
    r.set_defaults(func=reproduce)

    sv = sub.add_parser("serve", help="serve a local model over vLLM's OpenAI-compatible API (an LLM judge for -p judge llm)",
                        description="Serve MODEL on 127.0.0.1 with vLLM until Ctrl-C; requests need the key in $API_KEY_ENV.")
    sv.add_argument("model", help="'smollm2' (SmolLM2-135M-Instruct from `make install-small`) or a model folder")
    sv.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    sv.add_argument("--name", default=None, help="the model name it answers to (default: 'smollm2' or the folder's name)")
    sv.add_argument("--api-key-env", default="SELFALIGN_JUDGE_KEY", help="environment variable holding the key it requires (default: SELFALIGN_JUDGE_KEY)")
    sv.add_argument("--dtype", default="float32", help="vLLM dtype: float32 (CPU), bfloat16 (GPU)")
    sv.add_argument("--max-model-len", type=int, default=4096, help="context length (default: 4096)")
    sv.set_defaults(func=serve)

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
    args.argv = sys.argv[1:] if argv is None else list(argv)
    try: return args.func(args)
    except ReproduceError as e:
        print(f"selfalign: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
