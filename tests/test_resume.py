"""Runs that survive faults: a reproduction killed (SIGKILL) mid-run and run again into the same folder reuses the data
and the rows that finished, trains the rest, and ends with the metrics of an uninterrupted run; a changed config
trains every row again. The end-to-end test runs the DPO band (SFT → RM → DPO: a row that starts from an earlier row's
checkpoint, and a reward model the band keeps in memory for its evaluation) far smaller than `TINY_OVERRIDES`, each
run a process of its own on one thread. The toy tests check the driver's decisions without training anything."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfalign.bands.base import BandConfig, Row, run_band
from selfalign.bands.dpo import DPOBand, DPOBandConfig

TINY = {"n_prompts": 120, "n_eval": 30, "steps": 4, "sft_steps": 4, "rm_steps": 4, "betas": [0.3], "beta": 0.3, "bon_ns": [1, 2],
        "ppo_kl_coefs": [], "ppo_gold_kl": None}

# What the DPO paper notebook does, minus the figures: run the band, write metrics.json.
DRIVER = """
import json, sys
from selfalign.bands.base import run_band
from selfalign.bands.dpo import DPOBand, DPOBandConfig, band_tables
from selfalign.core.base import RunDir
out, cfg = sys.argv[1], DPOBandConfig.from_dict(json.loads(sys.argv[2]))
run = RunDir(out)
res = run_band(DPOBand(), cfg, out, progress=lambda s: print(s, flush=True))
run.write_metrics(paper="dpo", scale="tiny", config="resume", seed=cfg.seed, tables=band_tables(res, cfg.betas), claims=res["claims"],
                  seconds=res["seconds"])
"""


def _start(out: Path, **changes) -> subprocess.Popen:
    "The driver as a process of its own on one thread, its output in a file beside `out` (`p.log`)."
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    log = out.with_name(f"{out.name}.{time.monotonic_ns()}.log")
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-c", DRIVER, str(out), json.dumps({**TINY, **changes})], env=env, stdout=f, stderr=subprocess.STDOUT)
    p.log = log
    return p


def _finish(p: subprocess.Popen, timeout: float = 300) -> str:
    p.wait(timeout=timeout)
    out = p.log.read_text()
    assert p.returncode == 0, out[-3000:]
    return out


def _comparable(folder: Path) -> dict:
    "metrics.json's claims and tables (the seconds and wall time are the only fields that may differ between runs)."
    m = json.loads((folder / "metrics.json").read_text())
    return {"claims": m["claims"], "tables": m["tables"]}


def test_killed_run_resumes_to_the_uninterrupted_metrics(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    t0 = time.perf_counter()
    whole = _start(full)  # the uninterrupted run, beside the one to be killed (one thread each)
    victim = _start(killed)
    marker = killed / "rm" / "row.json"  # rows: SFT, RM, DPO β=0.3; kill once SFT and RM are complete
    while not marker.exists():
        assert victim.poll() is None, f"the run ended before its RM row finished:\n{victim.log.read_text()[-3000:]}"
        assert time.perf_counter() - t0 < 300, "the RM row did not finish in 300 s"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL); victim.wait()
    assert (killed / "sft" / "row.json").exists() and not (killed / "dpo-beta0.3" / "row.json").exists()
    assert not (killed / "results.json").exists()  # killed mid-run
    _finish(whole)

    log = _finish(_start(killed))  # run again into the killed run's folder
    assert "data: reused from" in log
    assert f"row SFT: reused from {killed / 'sft'}" in log and f"row RM: reused from {killed / 'rm'}" in log
    assert "row DPO β=0.3: reused" not in log
    res = json.loads((killed / "results.json").read_text())
    assert res["resumed"] == {"data": True, "rows": ["SFT", "RM"]}
    assert (killed / "dpo-beta0.3" / "row.json").exists()
    # Training and evaluation are seeded and run on one CPU thread: the resumed run's numbers are the uninterrupted
    # run's exactly (the reused reward model is read back from its fp32 checkpoint, the data from its exact JSON).
    assert _comparable(killed) == _comparable(full)
    print(f"killed, resumed and uninterrupted runs: {time.perf_counter() - t0:.1f}s")

    # The uninterrupted run's folder, run again (in this process) with the RM's learning rate changed: no row of the
    # first run is reused, not even the SFT row that the RM's learning rate does not touch. Stopped once the first row is decided.
    lines = []
    def progress(line):
        lines.append(line)
        if line.startswith("row SFT:"): raise Stop
    with pytest.raises(Stop): run_band(DPOBand(), DPOBandConfig.from_dict({**TINY, "rm_lr": 5e-4}), full, progress=progress)
    assert not any("data: reused" in l for l in lines)  # the data is built again too
    assert lines[-1] == f"row SFT: training afresh ({full / 'sft'} holds a row of another config, seed, policy or data)"


class Stop(Exception):
    "Raised by a progress callback to end a run once it has shown its decision."


N_RECORDS = [3]  # the toy's data: changed by a test as a non-deterministic data stage would change it


class Toy:
    "Two rows, `b` after `a`; records what it builds and trains; `extra` is part of its state and its data."
    def __init__(self, extra=None): self.built, self.log, self.extra = [], [], extra
    def build_data(self, cfg, policy, tok, out, progress): self.built.append(1); return {"n": N_RECORDS[0], "extra": self.extra}
    def rows(self, cfg, data): return [Row("a", "toy", [1] * data["n"], cfg.train_spec()), Row("b", "toy", [2], cfg.train_spec())]
    def train_row(self, cfg, row, tok, out, trained):
        self.log.append(row.name); (out / "final").mkdir(parents=True); (out / "final" / "w.txt").write_text(row.name)
        return type("R", (), {"final_dir": out / "final", "log_history": [{"loss": 0.5}], "counts": {"rows": len(row.data)}, "seconds": 1.0})()
    def evaluate(self, cfg, data, trained, tok, progress): return {"losses": {n: t.losses() for n, t in trained.items()}}
    def claims(self, cfg, data, results): return []


def _toy(out, cfg=BandConfig(), **kw):
    band, lines = Toy(**kw), []
    res = run_band(band, cfg, out, progress=lines.append)
    return band, lines, res


def test_fingerprint_decides_what_is_reused(tmp_path):
    band, _, res = _toy(tmp_path)
    assert band.log == ["a", "b"] and res["resumed"] == {"data": False, "rows": []}
    band, lines, res = _toy(tmp_path)
    assert band.log == [] and band.built == [] and res["resumed"] == {"data": True, "rows": ["a", "b"]}
    assert res["losses"] == {"a": [0.5], "b": [0.5]}  # what the evaluation sees of a reused row: what it saw of the trained one
    assert lines == [f"data: reused from {tmp_path / 'band_data.json'}", f"row a: reused from {tmp_path / 'a'}",
                     f"row b: reused from {tmp_path / 'b'}"]

    band, lines, _ = _toy(tmp_path, BandConfig(seed=1))  # another seed (any config value): the data and every row again
    assert band.built == [1] and band.log == ["a", "b"]
    assert f"row a: training afresh ({tmp_path / 'a'} holds a row of another config, seed, policy or data)" in lines
    band, _, _ = _toy(tmp_path, BandConfig(seed=1), extra=[1])  # the band's state: again
    assert band.log == ["a", "b"]

    (tmp_path / "b" / "row.json").unlink(); (tmp_path / "b" / "stale.bin").write_text("half a checkpoint")  # b killed mid-row
    band, lines, _ = _toy(tmp_path, BandConfig(seed=1), extra=[1])
    assert band.log == ["b"] and not (tmp_path / "b" / "stale.bin").exists()  # its folder is cleared first
    assert f"row b: training afresh ({tmp_path / 'b'} holds an unfinished row)" in lines

    shutil.rmtree(tmp_path / "a" / "final")  # a marker whose checkpoint is gone is not trusted
    band, _, _ = _toy(tmp_path, BandConfig(seed=1), extra=[1])
    assert band.log == ["a"]  # a trains again with the same fingerprint: b, which names a's fingerprint, still stands

    (tmp_path / "band_data.json").unlink(); N_RECORDS[0] = 4  # the data built again, differently: a's records changed
    try: band, _, _ = _toy(tmp_path, BandConfig(seed=1), extra=[1])
    finally: N_RECORDS[0] = 3
    assert band.log == ["a", "b"]  # b's own records did not change, but it comes after a


class SetToy(Toy):
    def build_data(self, *args): return {**super().build_data(*args), "kinds": {"x"}}  # a set: JSON has none


def test_data_that_json_cannot_give_back_is_built_every_time(tmp_path):
    run_band(SetToy(), BandConfig(), tmp_path, progress=lambda s: None)
    band, lines = SetToy(), []
    res = run_band(band, BandConfig(), tmp_path, progress=lines.append)
    assert "data: not cached (a builtins.set cannot be stored as JSON)" in lines and not (tmp_path / "band_data.json").exists()
    assert band.built == [1] and res["resumed"] == {"data": False, "rows": ["a", "b"]}  # built the same again: the rows stand


def test_band_state_without_a_fingerprint_is_never_reused(tmp_path):
    "A band holding an object that has no fingerprint of its own (here a set) cannot be known to be the same band."
    _toy(tmp_path, extra={3})
    band, _, res = _toy(tmp_path, extra={3})
    assert band.log == ["a", "b"] and res["resumed"] == {"data": False, "rows": []}


class Configs(Toy):
    "A paper with several configs over the same data: `n_eval` only chooses how many prompts evaluate; rows train alone."
    selection_fields, independent_rows, data_files = ("n_eval",), True, ("d.txt",)
    def build_data(self, cfg, policy, tok, out, progress): (out / "d.txt").write_text("records"); return super().build_data(cfg, policy, tok, out, progress)
    def evaluate(self, cfg, data, trained, tok, progress): return {**super().evaluate(cfg, data, trained, tok, progress), "per_prompt": {"x": [1.0]}}


def test_configs_differing_only_in_selection_share_data_and_rows(tmp_path):
    runs = lambda *names: [tmp_path / "paper" / n for n in names]
    main, abl, other = runs("main", "ablations", "other")
    band = Configs(); run_band(band, BandConfig(n_eval=10), main, progress=lambda s: None)
    assert band.built == [1] and band.log == ["a", "b"]
    band, lines = Configs(), []
    res = run_band(band, BandConfig(n_eval=20), abl, progress=lines.append)
    assert band.built == [] and band.log == [] and res["resumed"] == {"data": True, "rows": ["a", "b"]}
    assert lines == [f"data: reused from {main.resolve() / 'band_data.json'}", f"row a: reused from {main.resolve() / 'a'}",
                     f"row b: reused from {main.resolve() / 'b'}"]
    assert (abl / "d.txt").read_text() == "records" and (abl / "a" / "final" / "w.txt").read_text() == "a"
    assert (abl / "band_data.json").exists() and (abl / "a" / "row.json").exists()  # its own now: a re-run needs no sibling
    band = Configs(); run_band(band, BandConfig(n_eval=20, lr=1e-3), other, progress=lambda s: None)  # a field that is not selection
    assert band.built == [1] and band.log == ["a", "b"]
    band = Toy(); run_band(band, BandConfig(n_eval=20), tmp_path / "paper" / "toy", progress=lambda s: None)
    assert band.built == [1] and band.log == ["a", "b"]  # a band without selection fields looks at no sibling


def test_seed_folders_share_with_the_same_seed_of_another_config(tmp_path):
    band = Configs(); run_band(band, BandConfig(n_eval=10, seeds=(1, 3)), tmp_path / "main", progress=lambda s: None)
    band, lines = Configs(), []
    run_band(band, BandConfig(n_eval=20, seeds=(1, 2)), tmp_path / "ablations", progress=lines.append)
    assert band.built == [1] and band.log == ["a", "b"]  # seed 2 is new; seed 1 came from main/seed-1 (the toy's state is its log: each seed first)
    assert f"data: reused from {(tmp_path / 'main' / 'seed-1').resolve() / 'band_data.json'}" in lines


def test_a_code_change_trains_again(tmp_path, monkeypatch):
    import selfalign.bands.base as base
    _toy(tmp_path)
    monkeypatch.setattr(base, "source_fingerprint", lambda: "edited")
    band, _, res = _toy(tmp_path)
    assert band.built == [1] and band.log == ["a", "b"] and res["resumed"] == {"data": False, "rows": []}


def test_source_fingerprint_covers_the_package():
    import selfalign.bands.base as base
    fp = base.source_fingerprint()
    assert len(fp) == 16 and fp == base.source_fingerprint.__wrapped__()  # deterministic over the same files
