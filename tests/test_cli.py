"""`selfalign reproduce`: runs papers with papermill, layers parameters, fails clearly on bad input."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from conftest import BIN, ROOT
from selfalign.cli import main, plan, ReproduceError, _parse_value
from selfalign.report import RunRecord, write_report
from selfalign.core.base import validate_metrics

TEMPLATE = ROOT / "papers" / "_template"


def test_help_lists_reproduce():
    r = subprocess.run([str(BIN / "selfalign"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "reproduce" in r.stdout
    r = subprocess.run([str(BIN / "selfalign"), "reproduce", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--scale" in r.stdout and "-p NAME VALUE" in r.stdout


def test_reproduce_all_plans_every_paper_band():
    jobs = plan("all", "tiny", ROOT / "runs-never-written")
    papers = {j.paper for j in jobs}
    assert "dpo" in papers and "_template" not in papers  # the template is not a paper


def test_reproduce_runs_the_template(tmp_path, capsys):
    assert main(["reproduce", "_template", "--scale", "tiny", "--out", str(tmp_path)]) == 0
    run = tmp_path / "_template" / "demo"
    assert str(tmp_path.resolve()) in capsys.readouterr().out
    m = validate_metrics(json.loads((run / "metrics.json").read_text()))
    assert (m["paper"], m["scale"], m["config"]) == ("_template", "tiny", "demo")
    assert {"config.json", "env.json", "metrics.json", "rate.png", "reproduce.ipynb"} <= {p.name for p in run.iterdir()}
    env = json.loads((run / "env.json").read_text())
    assert env["packages"]["torch"] and "commit" in env["git"]


def test_parameter_layers(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("n_flips: 123\np_heads: 0.7\n")
    jobs = plan("_template", "small", tmp_path, files=[extra], overrides={"p_heads": 0.2})
    (job,) = jobs
    assert job.parameters["n_flips"] == 123  # -f beats the config's by_scale.small (4000)
    assert job.parameters["p_heads"] == 0.2  # -p beats -f
    assert job.parameters["scale"] == "small" and job.out_dir == tmp_path / "_template" / "demo"
    (job,) = plan("_template", "small", tmp_path)
    assert job.parameters["n_flips"] == 4000  # by_scale applies


def test_claim_that_fails_is_a_finding_not_an_error(tmp_path):
    assert main(["reproduce", "_template", "--out", str(tmp_path), "-p", "p_heads", "0.3"]) == 0
    (claim,) = json.loads((tmp_path / "_template" / "demo" / "metrics.json").read_text())["claims"]
    assert claim["holds"] is False and claim["value"] < 0.5


@pytest.mark.parametrize("args, message", [
    (["reproduce", "nosuchpaper"], "unknown paper"),
    (["reproduce", "_template", "-p", "bta", "0.3"], "unknown parameter"),
    (["reproduce", "_template", "-p", "n_flips", "many"], "parameter 'n_flips' should be int"),
    (["reproduce", "_template", "-c", "table9"], "no config"),
])
def test_bad_command_lines_fail_clearly(tmp_path, capsys, args, message):
    assert main(args + ["--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "_template").exists()  # nothing ran


def test_bad_yaml_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_flips: 10\np_heads: [0.5\n")
    assert main(["reproduce", "_template", "--out", str(tmp_path), "-f", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml:" in err and "invalid YAML" in err


def test_failing_notebook_is_reported_and_others_still_run(tmp_path, monkeypatch, capsys):
    papers = tmp_path / "papers"
    for name in ("aaa_broken", "bbb_ok"):
        shutil.copytree(TEMPLATE, papers / name)
    nb = nbformat.read(papers / "aaa_broken" / "reproduce.ipynb", as_version=4)
    nb.cells.insert(3, nbformat.v4.new_code_cell("raise RuntimeError('boom in the experiment')"))
    nbformat.write(nb, papers / "aaa_broken" / "reproduce.ipynb")
    monkeypatch.setenv("SELFALIGN_PAPERS", str(papers))
    out = tmp_path / "runs"
    assert main(["reproduce", "all", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert f"report: {out.resolve() / 'REPORT.md'}" in captured.out
    assert "aaa_broken/demo (tiny) FAILED" in err and "boom in the experiment" in err
    assert (out / "aaa_broken" / "demo" / "reproduce.ipynb").exists()  # executed copy kept for inspection
    assert (out / "bbb_ok" / "demo" / "metrics.json").exists()
    # the report: every claim in one table, the failure with where its executed copy is, figures linked
    report = (out / "REPORT.md").read_text()
    claim = json.loads((out / "bbb_ok" / "demo" / "metrics.json").read_text())["claims"][0]
    row = next(l for l in report.splitlines() if l.startswith("| bbb_ok | demo | " + claim["id"]))
    verdict = claim.get("verdict") or ("holds" if claim["holds"] else "fails")
    assert f"{claim['value']:.4g}" in row and (f"**{verdict}**" if verdict == "holds" else f"| {verdict} |") in row
    assert "**FAILED**" in report and "boom in the experiment" in report and "aaa_broken/demo/reproduce.ipynb" in report
    assert "![rate](bbb_ok/demo/rate.png)" in report
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>") and '<img src="bbb_ok/demo/rate.png"' in page and "boom in the experiment" in page


def test_every_paper_notebook_documents_typed_parameters():
    """`papermill --help-notebook` shows a type and help text for every parameter of every paper notebook."""
    import papermill as pm
    notebooks = sorted((ROOT / "papers").glob("*/*.ipynb"))
    assert notebooks
    for nb in notebooks:
        params = pm.inspect_notebook(str(nb))
        assert {"scale", "config", "out_dir", "seed"} <= set(params), nb
        for name, p in params.items():
            assert p["inferred_type_name"] not in ("None", "Unknown type"), f"{nb}: parameter {name} has no type"
            assert p["help"], f"{nb}: parameter {name} has no help comment"


def test_every_paper_parameter_line_is_declared():
    "papermill silently drops a parameter line it cannot parse (e.g. quotes in a comment after a string default)."
    import papermill as pm
    for nb_path in sorted((ROOT / "papers").glob("*/reproduce.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        names = [l.split(":")[0].split("=")[0].strip() for l in cell.source.splitlines() if l.strip() and not l.startswith("#")]
        assert sorted(pm.inspect_notebook(str(nb_path))) == sorted(names), nb_path


def _fake_papers(root, **papers):
    """`papers/<name>/` for each name: a tiny notebook (no heavy imports, so a run is about a kernel start) and
    `configs/demo.yaml` holding the given parameters. `nap` seconds of sleep (after touching `napping` in the run
    folder), `fail` raises; otherwise it writes config.json, fig.png and metrics.json with one claim."""
    sources = ['scale: str = "tiny"  # scale\nconfig: str = "demo"  # config\nout_dir: str = "runs/fake/demo"  # run folder\n'
               'seed: int = 0  # seed\nnap: float = 0.0  # seconds to sleep\nfail: bool = False  # raise',
               "import json, os, pathlib, time\nrun = pathlib.Path(out_dir); run.mkdir(parents=True, exist_ok=True)\n"
               "(run / 'config.json').write_text(json.dumps({'nap': nap, 'threads': os.environ.get('OMP_NUM_THREADS')}))",
               "if nap: (run / 'napping').touch(); time.sleep(nap)\nassert not fail, 'failing as asked'",
               "(run / 'fig.png').write_bytes(b'png')\n"
               "claim = dict(id='fake-claim', statement='s', value=0.7, ci95=[0.6, 0.8], threshold=0.5, verdict='holds', "
               "holds=True)\n(run / 'metrics.json').write_text(json.dumps(dict(paper=run.parent.name, scale=scale, "
               "config=config, seed=seed, tables={}, claims=[claim])))"]
    cells = [nbformat.v4.new_code_cell(src) for src in sources]
    cells[0].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells, metadata=nbformat.read(TEMPLATE / "reproduce.ipynb", as_version=4).metadata)
    for name, params in papers.items():
        (root / name / "configs").mkdir(parents=True)
        nbformat.write(nb, root / name / "reproduce.ipynb")
        (root / name / "configs" / "demo.yaml").write_text(json.dumps(params))
    return root


def test_tiny_runs_two_seeds_unless_one_seed_is_asked_for(tmp_path):
    "The tiny configs run seeds 0 and 1; `-p seed 3` runs seed 3 alone; `-p seeds` wins over both."
    assert {j.paper: j.parameters["seeds"] for j in plan("all", "tiny", tmp_path)} == dict.fromkeys(
        ["almost", "dlma", "dpo", "salmon", "self_contrast"], [0, 1])
    assert plan("dpo", "small", tmp_path)[0].parameters.get("seeds", []) == []
    (job,) = plan("dpo", "tiny", tmp_path, overrides={"seed": 3})
    assert job.parameters["seed"] == 3 and job.parameters["seeds"] == []
    (job,) = plan("dpo", "tiny", tmp_path, overrides={"seed": 3, "seeds": [1, 2]})
    assert job.parameters["seeds"] == [1, 2]


def test_p_values_in_exponent_notation_are_numbers(tmp_path):
    "YAML 1.1 reads 1e-4 as a string; -p (and config files) read it, 1E5, .5 and inf as numbers."
    assert [_parse_value(v) for v in ("1e-4", "1E5", ".5", "inf", "-inf", "2.0e-4", "3", "0.3", "[1e-3, 2]", "abc")] == \
        [1e-4, 1e5, 0.5, float("inf"), float("-inf"), 2e-4, 3, 0.3, [1e-3, 2], "abc"]
    (job,) = plan("_template", "tiny", tmp_path, overrides={"p_heads": _parse_value("7.5e-1")})
    assert job.parameters["p_heads"] == 0.75


def test_rerun_clears_the_previous_outputs_and_marks_the_folder(tmp_path, monkeypatch, capsys):
    "A re-run into the same --out first removes the old run's outputs; a folder whose run did not succeed says so."
    monkeypatch.setenv("SELFALIGN_PAPERS", str(_fake_papers(tmp_path / "papers", fake={})))
    out = tmp_path / "runs"; run = out / "fake" / "demo"
    assert main(["reproduce", "fake", "--out", str(out)]) == 0
    assert {"metrics.json", "fig.png", "config.json", "reproduce.ipynb"} <= {p.name for p in run.iterdir()}
    assert not (run / "INCOMPLETE.json").exists() and "fake-claim" in (out / "REPORT.md").read_text()
    checkpoint = run / "band" / "sft" / "final" / "model.safetensors"  # what a resumed run would use: kept
    checkpoint.parent.mkdir(parents=True); checkpoint.write_text("weights")
    assert main(["reproduce", "fake", "--out", str(out), "-p", "fail", "true"]) == 1
    assert not (run / "metrics.json").exists() and not (run / "fig.png").exists() and (run / "config.json").exists()
    marker = json.loads((run / "INCOMPLETE.json").read_text())
    assert marker["status"] == "failed" and "failing as asked" in marker["error"] and marker["started"]
    assert marker["command"] == f"selfalign reproduce fake --out {out} -p fail true"
    assert checkpoint.read_text() == "weights"
    report = (out / "REPORT.md").read_text()
    assert "**FAILED**" in report and "fake-claim" not in report


def test_executed_copy_is_mentioned_only_when_written(tmp_path, monkeypatch, capsys):
    import selfalign.cli as cli
    monkeypatch.setattr(cli, "run_job", lambda job, **kw: (False, 0.1, "OSError: the disk is full"))
    assert main(["reproduce", "_template", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "OSError: the disk is full" in err and "executed copy kept" not in err
    report = (tmp_path / "REPORT.md").read_text()
    assert "**FAILED**" in report and "Executed copy kept" not in report


def test_report_shows_verdicts_and_counts_them_per_paper(tmp_path):
    claim = lambda i, **kw: dict(id=f"c{i}", statement="s", value=0.6, ci95=[0.4, 0.8], threshold=0.5, **kw)
    claims = {"dpo": [claim(1, holds=True, verdict="holds"), claim(2, holds=False, verdict="inconclusive"),
                      claim(3, holds=False, verdict="fails"), claim(4, holds=True)],  # no verdict: read from holds
              "dlma": [claim(1, holds=False)]}
    runs = []
    for paper, cs in claims.items():
        (tmp_path / paper).mkdir()
        (tmp_path / paper / "metrics.json").write_text(json.dumps(dict(paper=paper, scale="tiny", config="t", seed=0,
                                                                       tables={}, claims=cs)))
        runs.append(RunRecord(paper, "t", "tiny", tmp_path / paper, "ok", 1.0))
    runs.append(RunRecord("salmon", "t", "tiny", tmp_path / "salmon", "interrupted", 2.0, "KeyboardInterrupt"))
    md, page = write_report(tmp_path, runs, not_run=["self_contrast/t"])
    report = md.read_text()
    assert "- **dpo**: holds 2 · fails 1 · inconclusive 1" in report
    assert "- **dlma**: holds 0 · fails 1 · inconclusive 0" in report and "| threshold | verdict | statement |" in report
    assert "| dpo | t | c1 | 0.6 | [0.4, 0.8] | 0.5 | **holds** |" in report
    assert "| dpo | t | c2 | 0.6 | [0.4, 0.8] | 0.5 | inconclusive |" in report
    assert "| dlma | t | c1 | 0.6 | [0.4, 0.8] | 0.5 | fails |" in report
    assert "| salmon | t | tiny | INTERRUPTED |" in report and "**INTERRUPTED**" in report
    assert "not run: self_contrast/t" in report
    assert "<li><b>dpo</b>: holds 2 · fails 1 · inconclusive 1</li>" in page.read_text()


def test_notebooks_run_without_kernel_noise(tmp_path, monkeypatch, capfd):
    "No '[IPKernelApp] WARNING | Kernel is running over TCP without encryption' on the terminal (capfd sees what the "
    "kernel process writes to the stderr it inherits) and no connection files left in the working or notebook folder."
    papers = _fake_papers(tmp_path / "papers", fake={})
    monkeypatch.setenv("SELFALIGN_PAPERS", str(papers)); monkeypatch.chdir(tmp_path)
    private = Path(tempfile.mkdtemp(prefix="sa-"))  # where the kernels' folders go (a short path: sockets live there)
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    assert main(["reproduce", "fake", "--out", "runs", "-p", "fail", "true"]) == 1  # a failed run too: no kernel log
    assert main(["reproduce", "fake", "--out", "runs"]) == 0
    assert main(["reproduce", "fake", "--out", "runs", "--kernel", "no-such-kernel"]) == 1
    err = capfd.readouterr().err
    assert "without encryption" not in err and "IPKernelApp" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["papers", "runs"]
    assert sorted(p.name for p in (papers / "fake").iterdir()) == ["configs", "reproduce.ipynb"]
    assert not list(private.iterdir())  # each kernel's folder removed, started or not
    monkeypatch.undo(); private.rmdir()


def test_ctrl_c_stops_cleanly_and_reports_what_finished(tmp_path):
    "Ctrl-C (SIGINT to the foreground process group) while the second of three notebooks runs."
    papers = _fake_papers(tmp_path / "papers", aaa_done={}, bbb_slow={"nap": 120}, ccc_never={})
    out = tmp_path / "runs"; slow = out / "bbb_slow" / "demo"
    p = subprocess.Popen([str(BIN / "selfalign"), "reproduce", "all", "--out", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "SELFALIGN_PAPERS": str(papers)},
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (slow / "napping").exists():
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        assert json.loads((slow / "INCOMPLETE.json").read_text())["status"] == "running"
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and time.monotonic() - t0 < 20, stderr
    assert "Traceback" not in stderr and "without encryption" not in stderr, stderr
    last = "selfalign: interrupted during bbb_slow/demo; 1 of 3 notebook(s) finished, not run: ccc_never/demo"
    assert stderr.strip().splitlines()[-1] == last, stderr
    assert f"report: {out.resolve() / 'REPORT.md'}" in stdout
    report = (out / "REPORT.md").read_text()
    assert "| aaa_done | demo | fake-claim |" in report and "| aaa_done | demo | tiny | ok |" in report
    assert "| bbb_slow | demo | tiny | INTERRUPTED |" in report and "**INTERRUPTED**" in report
    assert "not run: ccc_never/demo" in report and not (out / "ccc_never").exists()
    assert not (out / "aaa_done" / "demo" / "INCOMPLETE.json").exists()
    assert json.loads((slow / "INCOMPLETE.json").read_text())["status"] == "interrupted"
    nb = nbformat.read(slow / "reproduce.ipynb", as_version=4)  # the kept notebook says where it stopped
    status = {c.source.split("\n")[0][:12]: c.metadata.papermill["status"] for c in nb.cells if c.cell_type == "code"}
    assert nb.metadata.papermill["status"] == "interrupted" and nb.metadata.papermill["exception"]
    assert status["if nap: (run"] == "failed" and status["(run / 'fig."] == "pending", status


def test_jobs_run_notebooks_at_once_and_ctrl_c_stops_them_all(tmp_path):
    "`--jobs 2`: two notebooks nap at the same time, each kernel with half the cores as threads; Ctrl-C stops both."
    papers = _fake_papers(tmp_path / "papers", aaa_slow={"nap": 120}, bbb_slow={"nap": 120}, ccc_never={})
    out = tmp_path / "runs"; slow = [out / p / "demo" for p in ("aaa_slow", "bbb_slow")]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    p = subprocess.Popen([str(BIN / "selfalign"), "reproduce", "all", "--out", str(out), "--jobs", "2"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**env, "SELFALIGN_PAPERS": str(papers)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not all((d / "napping").exists() for d in slow):  # both run at once
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGINT)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130 and "Traceback" not in stderr, stderr
    last = "selfalign: interrupted during aaa_slow/demo, bbb_slow/demo; 0 of 3 notebook(s) finished, not run: ccc_never/demo"
    assert stderr.strip().splitlines()[-1] == last, stderr
    cores = len(os.sched_getaffinity(0))
    for d in slow:
        assert json.loads((d / "INCOMPLETE.json").read_text())["status"] == "interrupted"
        assert json.loads((d / "config.json").read_text())["threads"] == str(max(1, cores // 2))
    report = (out / "REPORT.md").read_text()
    assert report.index("| aaa_slow | demo | tiny | INTERRUPTED |") < report.index("| bbb_slow | demo | tiny | INTERRUPTED |")
    assert not (out / "ccc_never").exists()


def test_a_papers_configs_run_in_order_beside_the_other_papers(tmp_path):
    "`--jobs 2`: a paper's two configs run one after the other (the second can reuse the first's rows), beside another paper."
    papers = _fake_papers(tmp_path / "papers", aaa={"nap": 3}, bbb={"nap": 3})
    (papers / "aaa" / "configs" / "second.yaml").write_text(json.dumps({"nap": 3}))
    out = tmp_path / "runs"
    r = subprocess.run([str(BIN / "selfalign"), "reproduce", "all", "--out", str(out), "--jobs", "2"], capture_output=True,
                       text=True, env={**os.environ, "SELFALIGN_PAPERS": str(papers)}, timeout=300)
    assert r.returncode == 0, r.stderr
    t = lambda paper, config, name: (out / paper / config / name).stat().st_mtime
    assert t("aaa", "demo", "metrics.json") <= t("aaa", "second", "napping")  # one after the other
    assert t("bbb", "demo", "napping") < t("aaa", "demo", "metrics.json")  # the other paper at the same time


@pytest.mark.parametrize("value, scale, n, expected", [("auto", "tiny", 6, None), ("auto", "small", 6, 1), ("3", "tiny", 2, 2),
                                                       ("1", "paper", 6, 1)])
def test_parallel_jobs(value, scale, n, expected):
    from selfalign.cli import parallel_jobs
    assert parallel_jobs(value, scale, n) == (expected or max(1, min(n, len(os.sched_getaffinity(0)))))


def test_bad_jobs_value_is_refused(tmp_path, capsys):
    assert main(["reproduce", "_template", "--out", str(tmp_path), "--jobs", "0"]) == 2
    assert "--jobs 0: give a number ≥ 1 or 'auto'" in capsys.readouterr().err
