"""The README's two commands, the Makefile and .ci/run must agree."""
import re

from conftest import ROOT


def _fresh_machine_block():
    text = (ROOT / "README.md").read_text()
    section = text.split("## On a fresh machine", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.strip().splitlines() if line.split("#")[0].strip()]


def _make_recipe(target):
    mk = (ROOT / "Makefile").read_text()
    m = re.search(rf"^{target}:([^\n#]*)(?:##[^\n]*)?\n((?:\t[^\n]*\n)*)", mk, re.M)
    assert m, f"Makefile has no '{target}' target"
    return m.group(1).split(), [l.strip() for l in m.group(2).splitlines()]


def test_readme_gives_exactly_two_commands():
    assert _fresh_machine_block() == ["make reproduce", "make test"]


def test_make_reproduce_installs_then_runs_the_tiny_reproduction():
    deps, recipe = _make_recipe("reproduce")
    assert "install" in deps
    assert any(re.search(r"selfalign reproduce all --scale tiny\b", l) for l in recipe), recipe


def test_make_test_installs_then_runs_pytest():
    "Every environment is installed first (the vLLM one beside the others, both waited for), then pytest runs."
    deps, recipe = _make_recipe("test")
    installs = set(re.findall(r"\binstall[a-z-]*", " ".join(deps + recipe[:-1])))
    assert {"install", "install-small", "install-vllm", "install-docs", "install-browser"} <= installs, recipe
    assert "wait" in " ".join(recipe[:-1]) and "pytest" in recipe[-1], recipe


def test_ci_runs_the_readme_test_command_and_nothing_else():
    lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()]
    commands = [l for l in lines if l and not l.startswith("#") and not l.startswith("set ") and not l.startswith("cd ")]
    assert commands == [_fresh_machine_block()[1]], commands


def test_install_pins_torch_first_and_constrains_the_rest():
    deps, recipe = _make_recipe(r"\$\(VENV\)/\.stamp-base")
    assert "requirements/torch.txt" in recipe[0] and "-r requirements/torch.txt" in recipe[0]
    assert "-c requirements/torch.txt" in recipe[1] and "requirements/base.txt" in recipe[1]
    assert (ROOT / "requirements" / "torch.txt").read_text().count("torch==2.13.0") == 1
    pins = [l for l in (ROOT / "requirements" / "base.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert pins and all("==" in l for l in pins), [l for l in pins if "==" not in l]
    assert not any(l.startswith("torch==") for l in pins)
