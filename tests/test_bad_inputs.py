"""The bad-input corpus: every folder `tests/bad_inputs/<case>/` holding a `case.yaml` is one input that must be refused
with a clear message: the expected exit status, every expected text in the output, and no traceback.

`case.yaml` fields (paths in `argv`, `env` and `setup` may use `{here}`, the case folder, and `{tmp}`, a fresh temporary
folder):

    argv: [reproduce, _template, --out, "{tmp}/runs", -p, scale, paper]   # the `selfalign` arguments
    module: selfalign.trainers.sft     # optional: run `python -m <module> <argv>` instead (in-process, via runpy)
    exit: 2                            # the expected exit status (default 2)
    expect: ["-p scale", "--scale"]    # texts that must all appear in stdout + stderr
    absent: ["demo.yaml"]              # optional: texts that must not appear
    env: {SELFALIGN_PAPERS: "{here}/papers"}   # optional: environment variables for the case
    setup:                             # optional, done in this order before the command
      make_file: ["{tmp}/out"]         #   create these files (with their folders)
      make_dir: ["{tmp}/ro"]           #   create these folders
      chmod_readonly: ["{tmp}/ro"]     #   create these folders read-only (skipped where that does not stop writes: root)

Everything else a case needs (configs, notebooks, paper folders) lives as files in its folder. Commands run from the
repository root, in-process, so the whole corpus takes seconds.
"""
import runpy
import stat
import sys
import traceback
from pathlib import Path

import pytest
import yaml

from selfalign.cli import main

CASES = Path(__file__).parent / "bad_inputs"


def _cases() -> list[Path]:
    return sorted(p.parent for p in CASES.glob("*/case.yaml"))


def _fill(value, here: Path, tmp: Path):
    "`value` with `{here}` and `{tmp}` replaced, in strings, lists and mappings."
    if isinstance(value, str): return value.replace("{here}", str(here)).replace("{tmp}", str(tmp))
    if isinstance(value, list): return [_fill(v, here, tmp) for v in value]
    if isinstance(value, dict): return {k: _fill(v, here, tmp) for k, v in value.items()}
    return value


def _as_list(v) -> list: return v if isinstance(v, list) else [] if v is None else [v]


def _writable(folder: Path) -> bool:
    try: (folder / ".probe").touch(); (folder / ".probe").unlink(); return True
    except OSError: return False


def _run(case: dict) -> int:
    "Run the case's command in-process; its exit status (an uncaught exception prints its traceback and gives 1)."
    try:
        if case.get("module"):
            sys.argv = [case["module"], *map(str, case["argv"])]
            runpy.run_module(case["module"], run_name="__main__", alter_sys=True)
            return 0
        return main([str(a) for a in case["argv"]])
    except SystemExit as e:
        if isinstance(e.code, str): print(e.code, file=sys.stderr); return 1
        return e.code or 0
    except Exception:
        traceback.print_exc()
        return 1


@pytest.mark.parametrize("folder", _cases(), ids=lambda p: p.name)
def test_bad_input_is_refused_clearly(folder, tmp_path, monkeypatch, capfd):
    case = _fill(yaml.safe_load((folder / "case.yaml").read_text(encoding="utf-8")), folder, tmp_path)
    assert isinstance(case.get("argv"), list) and case.get("expect"), f"{folder}/case.yaml needs argv and expect"
    setup = case.get("setup") or {}
    for k, v in (case.get("env") or {}).items(): monkeypatch.setenv(k, str(v))
    monkeypatch.setattr(sys, "argv", list(sys.argv)); monkeypatch.chdir(CASES.parent.parent)
    for f in map(Path, _as_list(setup.get("make_file"))): f.parent.mkdir(parents=True, exist_ok=True); f.write_text("")
    for d in map(Path, _as_list(setup.get("make_dir"))): d.mkdir(parents=True, exist_ok=True)
    readonly = [Path(p) for p in _as_list(setup.get("chmod_readonly"))]
    for p in readonly:
        p.mkdir(parents=True, exist_ok=True)
        p.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if readonly and _writable(readonly[0]):
        readonly[0].chmod(stat.S_IRWXU)
        pytest.skip("this user can write in read-only folders (root)")
    try: code = _run(case)
    finally:
        for p in readonly: p.chmod(stat.S_IRWXU)
    cap = capfd.readouterr()
    text = cap.out + cap.err
    assert code == case.get("exit", 2), f"exit status {code}, expected {case.get('exit', 2)}; output:\n{text}"
    assert "Traceback" not in text, text
    missing = [s for s in case["expect"] if s not in text]
    assert not missing, f"missing {missing} in:\n{text}"
    present = [s for s in _as_list(case.get("absent")) if s in text]
    assert not present, f"should not say {present}:\n{text}"
