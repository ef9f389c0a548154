"""The package's import graph obeys CONTRIBUTING.md's layer table, read from the source with `ast` (nothing is imported).

Rules: (a) a module imports only from strictly lower layers or from its own subpackage; (b) no import cycles;
(c) no `_private` name of another selfalign module is imported (`from m import _x`) or used (`m._x`); (d) a band never
imports another band (`bands.base`, the shared driver, is not a band). Imports inside functions count like any other.
`selfalign/__init__.py` and `selfalign/_modidx.py` (nbdev's index) are exempt. String-named imports
(`importlib.import_module("selfalign...")`, as the generate backend registry uses) are deliberately not edges.
"""
import ast
import shutil
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT

# CONTRIBUTING.md, "Layers": a module imports only from a lower number, or from its own subpackage.
LAYERS = {"core": 0, "data": 1, "models": 2, "generate": 3, "objectives": 3, "trainers": 4, "judges": 4,
          "eval": 5, "world": 6, "bands": 7, "cli": 8, "report": 8}
EXEMPT = {"", "_modidx"}  # the top-level package `__init__` and nbdev's `_modidx`, relative to the package
SHARED_BAND_MODULES = {"bands", "bands.base"}  # the bands package itself and the one driver every band builds on
GROUPS = {"cli": "app", "report": "app"}  # top-level modules that count as one subpackage ("everything" includes each other)


@dataclass(frozen=True, order=True)
class Violation:
    file: str  # path relative to the package's parent folder
    line: int
    kind: str  # "layer", "cycle", "private", "band", "unknown"
    importer: str  # dotted module name
    imported: str  # dotted module name (for "private": the module the name belongs to)
    detail: str

    def __str__(self): return f"{self.file}:{self.line}: [{self.kind}] {self.importer} imports {self.imported}: {self.detail}"


@dataclass(frozen=True)
class _Edge:
    importer: str
    imported: str
    file: str
    line: int


def _modules(pkg_dir: Path) -> dict[str, Path]:
    "Dotted module name -> file, for every `.py` under `pkg_dir` (a package `__init__` names its package)."
    out = {}
    for f in sorted(pkg_dir.rglob("*.py")):
        parts = list(f.relative_to(pkg_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__": parts.pop()
        out[".".join(parts)] = f
    return out


def _private(name: str) -> bool: return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _rel(pkg: str, module: str) -> str: return module[len(pkg) + 1:] if module != pkg else ""


def _subpackage(pkg: str, module: str) -> str: return _rel(pkg, module).split(".")[0]


def _group(sub: str) -> str: return GROUPS.get(sub, sub)


def _dotted(node) -> list[str] | None:
    "['a', 'b', 'c'] for the expression `a.b.c`, else None."
    names = []
    while isinstance(node, ast.Attribute): names.append(node.attr); node = node.value
    if not isinstance(node, ast.Name): return None
    return [node.id] + names[::-1]


def _imports(pkg: str, module: str, is_pkg: bool, tree: ast.AST, known: set[str]):
    """Every selfalign import of one module as `(line, target module, imported name or None, bound alias or None)`;
    `from m import sub` of a submodule gives target `m.sub` and no name."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == pkg or a.name.startswith(pkg + "."):
                    yield node.lineno, a.name, None, (a.asname, a.name) if a.asname else (pkg, pkg)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                if not base: continue  # above the top-level package: Python itself refuses it
                target = ".".join(base + ([node.module] if node.module else []))
            else: target = node.module or ""
            if not (target == pkg or target.startswith(pkg + ".")): continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in known: yield node.lineno, sub, None, (a.asname or a.name, sub)
                else: yield node.lineno, target, a.name, None


def _cycle_path(graph: dict[str, set[str]], start: str, goal: str, members: set[str]) -> list[str]:
    "A shortest path start -> ... -> goal inside `members`."
    prev, todo = {start: None}, deque([start])
    while todo:
        n = todo.popleft()
        if n == goal: break
        for m in sorted(graph.get(n, ())):
            if m in members and m not in prev: prev[m] = n; todo.append(m)
    path, n = [], goal
    while n is not None: path.append(n); n = prev[n]
    return path[::-1]


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    "Tarjan's strongly connected components (iterative)."
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index: continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on: low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work: low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop(); on.discard(w); comp.add(w)
                    if w == v: break
                out.append(comp)
    return out


def check_layers(pkg_dir: str | Path) -> list[Violation]:
    "Every violation of the layer rules in the package at `pkg_dir` (its folder name is the package name)."
    pkg_dir = Path(pkg_dir)
    pkg, mods = pkg_dir.name, _modules(pkg_dir)
    known, out, edges = set(mods), [], []
    for module, path in mods.items():
        rel = _rel(pkg, module)
        if rel in EXEMPT: continue
        file, tree = str(path.relative_to(pkg_dir.parent)), ast.parse(path.read_text(encoding="utf-8"), str(path))
        v = lambda line, kind, target, detail: out.append(Violation(file, line, kind, module, target, detail))
        sub, aliases = _subpackage(pkg, module), {}
        for line, target, name, alias in _imports(pkg, module, path.name == "__init__.py", tree, known):
            if alias: aliases[alias[0]] = alias[1]
            if target not in known: v(line, "unknown", target, "no such module in the package"); continue
            if _rel(pkg, target) in EXEMPT: continue
            tsub = _subpackage(pkg, target)
            edges.append(_Edge(module, target, file, line))
            if sub not in LAYERS: v(line, "unknown", target, f"'{sub}' is not in the layer table")
            elif tsub not in LAYERS: v(line, "unknown", target, f"'{tsub}' is not in the layer table")
            elif _group(tsub) != _group(sub) and LAYERS[tsub] >= LAYERS[sub]:
                v(line, "layer", target, f"layer '{sub}' ({LAYERS[sub]}) may import only lower layers, "
                                         f"not '{tsub}' ({LAYERS[tsub]})")
            if name is not None and _private(name) and target != module:
                v(line, "private", target, f"imports the private name '{name}'")
            if _private(target.rsplit(".", 1)[-1]): v(line, "private", target, "imports a private module")
            if (sub == tsub == "bands" and target != module and _rel(pkg, module) not in SHARED_BAND_MODULES
                    and _rel(pkg, target) not in SHARED_BAND_MODULES):
                v(line, "band", target, "a band never imports another band")
        for node in ast.walk(tree):  # `m._x` on a name bound to a selfalign module
            if not (isinstance(node, ast.Attribute) and _private(node.attr)): continue
            names = _dotted(node.value)
            if not names or names[0] not in aliases: continue
            target = ".".join([aliases[names[0]]] + names[1:])
            if target in known and target != module:
                v(node.lineno, "private", target, f"uses the private name '{node.attr}'")
    graph = {}
    for e in edges: graph.setdefault(e.importer, set()).add(e.imported)
    for comp in _strongly_connected(graph):
        for e in edges:
            if e.importer in comp and e.imported in comp and (len(comp) > 1 or e.importer == e.imported):
                loop = [e.importer] + _cycle_path(graph, e.imported, e.importer, comp)
                out.append(Violation(e.file, e.line, "cycle", e.importer, e.imported, "import cycle " + " -> ".join(loop)))
    return sorted(set(out))


# ---------------------------------------------------------------- the real package

def test_package_obeys_the_layer_table():
    found = check_layers(ROOT / "selfalign")
    assert not found, f"{len(found)} layer violation(s):\n" + "\n".join(map(str, found))


def test_layer_table_covers_every_subpackage():
    subs = {p.stem if p.is_file() else p.name for p in (ROOT / "selfalign").iterdir()
            if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem not in ("__init__", "_modidx"))}
    assert subs == set(LAYERS), f"not in the table: {sorted(subs - set(LAYERS))}; in the table only: {sorted(set(LAYERS) - subs)}"


# ---------------------------------------------------------------- the checker catches each kind of violation

FAKE = {
    "__init__.py": "from .bands import dpo  # exempt: the top-level package\n",
    "_modidx.py": "d = {}\n",
    "cli.py": "from .bands.dpo import run\nfrom .world import base as W\nfrom . import __version__\nfrom .report import r\n",
    "report.py": "from .core.base import seed\nr = 1\n",
    "core/__init__.py": "",
    "core/base.py": "import json\n\ndef seed():\n    from ..world.base import judge\n    return judge\n",
    "data/__init__.py": "",
    "data/records.py": "from ..core.base import seed\n\ndef _fail(): pass\ndef _tname(): pass\n",
    "data/corpora.py": "from .records import _fail\nfrom selfalign.data.records import seed as s2\n",
    "generate/__init__.py": "",
    "generate/base.py": "def make():\n    from selfalign.generate.vllm import VLLM\n    return VLLM\n",
    "generate/vllm.py": "from .base import make\nfrom ..objectives import losses\nclass VLLM: pass\n",
    "objectives/__init__.py": "",
    "objectives/losses.py": "import selfalign.data.records as R\nfrom selfalign.data import records\n",
    "eval/__init__.py": "",
    "eval/policy.py": "import selfalign.data.records\nfrom ..data import records as R\n\n"
                      "def f():\n    return R._fail, selfalign.data.records._tname, R.__name__\n",
    "world/__init__.py": "",
    "world/base.py": "from ..eval.policy import f\ndef judge(): pass\n",
    "bands/__init__.py": "",
    "bands/base.py": "from ..world import base as W\n",
    "bands/dpo.py": "from .base import W\ndef run(): pass\n",
    "bands/dlma.py": "from . import base\nfrom .dpo import run\nfrom ..nowhere import x\n",
}


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / "selfalign" / rel
        p.parent.mkdir(parents=True, exist_ok=True); p.write_text(text, encoding="utf-8")
    return root / "selfalign"


def test_checker_reports_each_planted_violation(tmp_path):
    found = check_layers(_write(tmp_path, FAKE))
    got = {(v.kind, v.file, v.line, v.importer, v.imported) for v in found}
    planted = {
        ("layer", "selfalign/core/base.py", 4, "selfalign.core.base", "selfalign.world.base"),  # inside a function
        ("private", "selfalign/data/corpora.py", 1, "selfalign.data.corpora", "selfalign.data.records"),
        ("layer", "selfalign/generate/vllm.py", 2, "selfalign.generate.vllm", "selfalign.objectives.losses"),  # same level
        ("private", "selfalign/eval/policy.py", 5, "selfalign.eval.policy", "selfalign.data.records"),  # R._fail, m.m._tname
        ("band", "selfalign/bands/dlma.py", 2, "selfalign.bands.dlma", "selfalign.bands.dpo"),
        ("unknown", "selfalign/bands/dlma.py", 3, "selfalign.bands.dlma", "selfalign.nowhere"),
        # generate.base <-> generate.vllm (inside one subpackage) and core -> world -> eval -> data -> core
        ("cycle", "selfalign/generate/base.py", 2, "selfalign.generate.base", "selfalign.generate.vllm"),
        ("cycle", "selfalign/generate/vllm.py", 1, "selfalign.generate.vllm", "selfalign.generate.base"),
        ("cycle", "selfalign/core/base.py", 4, "selfalign.core.base", "selfalign.world.base"),
        ("cycle", "selfalign/world/base.py", 1, "selfalign.world.base", "selfalign.eval.policy"),
        ("cycle", "selfalign/eval/policy.py", 1, "selfalign.eval.policy", "selfalign.data.records"),
        ("cycle", "selfalign/eval/policy.py", 2, "selfalign.eval.policy", "selfalign.data.records"),
        ("cycle", "selfalign/data/records.py", 1, "selfalign.data.records", "selfalign.core.base"),
    }
    assert got == planted, "\n".join(map(str, found))
    privates = sorted(v.detail for v in found if v.kind == "private")
    assert privates == ["imports the private name '_fail'", "uses the private name '_fail'", "uses the private name '_tname'"]
    cyc = next(v for v in found if v.kind == "cycle" and v.importer == "selfalign.generate.base")
    assert cyc.detail == "import cycle selfalign.generate.base -> selfalign.generate.vllm -> selfalign.generate.base"
    assert str(cyc).startswith("selfalign/generate/base.py:2: [cycle] selfalign.generate.base imports selfalign.generate.vllm")


def test_checker_accepts_a_clean_tree(tmp_path):
    clean = {k: v for k, v in FAKE.items() if k not in ("bands/dlma.py", "eval/policy.py", "data/corpora.py")}
    clean["core/base.py"] = "import json\n"
    clean["generate/base.py"] = 'BACKENDS = {"vllm": "selfalign.generate.vllm:VLLM"}\n'  # a string is not an edge
    clean["generate/vllm.py"] = "from .base import BACKENDS\nfrom ..models import loader\nclass VLLM: pass\n"
    clean["models/__init__.py"], clean["models/loader.py"] = "", "from ..data.records import seed\n"
    clean["eval/policy.py"] = "from ..data import records as R\n\ndef f():\n    return R.__name__\n"
    assert check_layers(_write(tmp_path, clean)) == []


def test_checker_finds_a_violation_planted_in_a_copy_of_the_real_tree(tmp_path):
    pkg = tmp_path / "selfalign"
    shutil.copytree(ROOT / "selfalign", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = set(check_layers(pkg))
    base = pkg / "core" / "base.py"
    n = len(base.read_text(encoding="utf-8").splitlines())
    with base.open("a", encoding="utf-8") as f:
        f.write("\ndef _planted():\n    from selfalign.bands import dpo as D\n    return D._lora\n")
    new = [v for v in check_layers(pkg) if v.file == "selfalign/core/base.py" and v.line > n]
    kinds = {(v.kind, v.line, v.imported) for v in new}
    assert ("layer", n + 3, "selfalign.bands.dpo") in kinds, new
    assert ("private", n + 4, "selfalign.bands.dpo") in kinds, new
    assert ("cycle", n + 3, "selfalign.bands.dpo") in kinds, new  # bands import core, which now imports a band
    assert {v for v in before if v.kind != "cycle"} <= set(check_layers(pkg))
