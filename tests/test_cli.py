"""`selfalign reproduce`: runs papers with papermill, layers parameters, fails clearly on bad input."""
import json
import shutil
import subprocess

import nbformat
import pytest

from conftest import BIN, ROOT
from selfalign.cli import main, plan, ReproduceError
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
    assert f"{claim['value']:.4g}" in row and ("**yes**" if claim["holds"] else "| no |") in row
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
