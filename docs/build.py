"""Build the selfalign docs site offline, and refresh the notebooks' committed outputs.

    python docs/build.py build [--runs runs] [--out docs/_build/html]   # the site (make docs)
    python docs/build.py outputs [nbs/<layer>/NN_name.ipynb | nbs/<layer> ...]   # re-execute, keep clean outputs
    python docs/build.py claims [--runs runs]   # the method pages' claims tables from the latest tiny runs, in place

The site is Sphinx + myst-nb with the book theme. Every `nbs/**/NN_*.ipynb` becomes a page at
`nbs/<layer>/NN_name.html` (found by globbing at build time, so a notebook added to any folder shows up), and the
Notebooks page lists them under one heading per layer folder, in the layer order (`LAYERS`). Notebooks are rendered
from their saved outputs (the docs never execute anything) after nbdev's own processors strip directives (`#| export`,
`#| hide`, `#| default_exp`); every exported cell is replaced by a card per exported name (signature with its
documented parameters, docstring), as `nbdev-docs` does with `show_doc`. The API reference is autodoc over the package,
one page per module named after it (`api/objectives.losses.html`), grouped by layer too, with nbdev's docments comments
as parameter descriptions. Each paper gets a reproductions page read from the latest run folder
(`runs/<paper>/<config>/metrics.json` and its figures). MathJax is served from the site itself (the
`jupyter-server-mathjax` wheel), so the site works without a network. A method page's claims table whose last column
is headed "latest tiny run" gets that column from the latest tiny runs (value, 95% interval, verdict), on the site and,
with `claims`, in the page's source.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
NBS = ROOT / "nbs"
PAPERS = ROOT / "papers"

# The package's layers, lowest first (CONTRIBUTING.md's layer table), with what each folder holds; the docs list notebooks and modules in
# this order, one heading per folder. A folder not listed here comes after them, alphabetically; the top level
# (`cli`, `report`; a notebook directly in nbs/) comes last.
LAYERS = {
    "core": "seeding, run folders, environment capture, the metrics and claims contract, stage configs",
    "data": "records and their validation, JSONL, chat templates, prompt and preference corpora",
    "models": "the one model loader, the tiny Llama and its tokenizer, SmolLM2",
    "generate": "the Generator protocol and its backends (hf, vLLM), shards and the cache",
    "objectives": "per-sequence log-probabilities and the preference losses, as pure tensor functions",
    "trainers": "SFT, reward and preference stages over TRL, multi-negative training",
    "judges": "the Judge protocol and its judges (embeddings, reward models, self-judging, proxies)",
    "eval": "sampling a policy, KL on samples, win rates with intervals, best-of-N",
    "world": "the miniature world: prompts, behaviours, principles, the oracle, its models and report",
    "bands": "the band driver and one module per paper",
}

# What the docs call each paper band (folder name -> title); a band without an entry uses its folder name.
PAPER_TITLES = {"dpo": "DPO (DeepSpeed-Chat style)", "dlma": "DLMA", "self_contrast": "Self-Contrast",
                "almost": "ALMoST", "salmon": "SALMON"}

# ---------------------------------------------------------------------------------------------------------------
# notebooks -> pages


def _layer_key(folder: str) -> tuple:
    "Sort key of a layer folder: the `LAYERS` order, then unknown folders alphabetically, the top level last."
    order = list(LAYERS)
    if folder == "": return (2, 0, "")
    return (0, order.index(folder), "") if folder in order else (1, 0, folder)


def find_notebooks(nbs: Path = NBS) -> list[Path]:
    "Every library notebook under `nbs` (`**/NN_name.ipynb`, any depth), in layer order, then by path."
    found = [p for p in nbs.glob("**/[0-9]*.ipynb")
             if not any(part.startswith((".", "_")) for part in p.relative_to(nbs).parts)]  # checkpoints, drafts
    return sorted(found, key=lambda p: (_layer_key(p.relative_to(nbs).parts[0] if len(p.relative_to(nbs).parts) > 1 else ""),
                                        p.relative_to(nbs).as_posix()))


def notebook_id(path: Path, nbs: Path = NBS) -> str:
    "A notebook's name in the docs and the tests: its path under `nbs/` without the suffix (`core/00_base`)."
    return path.relative_to(nbs).with_suffix("").as_posix()


def by_layer(names: list[str], sep: str = "/") -> list[tuple[str, list[str]]]:
    "Group `layer/rest` names by their layer folder (a name without `sep` is top level, \"\"), in layer order."
    groups: dict[str, list[str]] = {}
    for n in names: groups.setdefault(n.split(sep, 1)[0] if sep in n else "", []).append(n)
    return [(k, groups[k]) for k in sorted(groups, key=_layer_key)]

_PROGRESS = re.compile(r"\d+%\|.*\||\d+(\.\d+)?(it/s|s/it)\b")


def _names_defined(source: str) -> list[str]:
    "Public top-level functions and classes a code cell defines."
    try: tree = ast.parse(source)
    except SyntaxError: return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not n.name.startswith("_")]


def _card(obj, name: str) -> str:
    "A `show_doc`-style card: heading, signature with each parameter's comment, docstring."
    from nbdev.showdoc import show_doc
    md = show_doc(obj, name=name)._repr_markdown_()
    lines = [l for l in md.splitlines() if not l.startswith("[source](") and l.strip() != "---"]
    text = "\n".join(lines).strip()
    if isinstance(obj, type): text = text.replace(f"def {name}(", f"class {name}(", 1).replace(")->None:\n```", "):\n```", 1)
    return text.replace("### ", "#### ", 1)  # below the notebook's own section headings


def process_notebook(path: Path):
    "A notebook as the docs show it: directives gone, export cells replaced by cards, noisy outputs dropped."
    import importlib

    import nbformat
    from nbdev.process import NBProcessor
    from nbdev.processors import clean_magics, hide_, hide_line, rm_export, rm_header_dash, strip_ansi, strip_hidden_metadata
    nb = nbformat.read(path, as_version=4)
    module = None
    for c in nb.cells:
        m = re.match(r"#\|\s*default_exp\s+(\S+)", c.source) if c.cell_type == "code" else None
        if not m: continue
        try: module = importlib.import_module(f"selfalign.{m.group(1)}")
        except ImportError as e:
            raise SystemExit(f"{path}: its module selfalign.{m.group(1)} does not import ({e}); run `make export`") from e
    cells = []
    for c in nb.cells:  # cards first, while the `#| export` directives are still there
        cells.append(c)
        if c.cell_type == "code" and re.match(r"#\|\s*export\b", c.source) and module is not None:
            public = set(getattr(module, "__all__", []))
            cards = [_card(getattr(module, n), n) for n in _names_defined(c.source) if n in public and hasattr(module, n)]
            if cards: cells.append(nbformat.v4.new_markdown_cell("\n\n".join(cards)))
    nb.cells = cells
    # nbdev's processors, as nbdev-docs runs them (show_doc and Quarto-only ones aside)
    from fastcore.nbio import dict2nb
    proc = NBProcessor(nb=dict2nb(json.loads(json.dumps(nb))), procs=[strip_ansi, hide_line, rm_header_dash, rm_export, clean_magics, hide_,
                                     strip_hidden_metadata], rm_directives=True)
    proc.process()
    out = nbformat.v4.new_notebook(metadata={"kernelspec": nb.metadata.get("kernelspec", {}),
                                             "language_info": {"name": "python"}})
    for c in proc.nb.cells:
        if "source" not in c: continue  # removed by a processor
        c = nbformat.from_dict(dict(c))
        for k in [k for k in c if k.endswith("_")]: c.pop(k)  # the processor's own bookkeeping (directives_, idx_, …)
        if c.cell_type == "code":
            c.setdefault("execution_count", None); c.setdefault("outputs", []); c.setdefault("metadata", {})
            c.outputs = [o for o in c.outputs if not (o.get("output_type") == "stream" and o.get("name") == "stderr")]
        out.cells.append(c)
    nbformat.validate(out)
    return out


def notebook_summary(nb) -> str:
    "The notebook's one-line `>` summary under its title (nbdev's description), or \"\"."
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^>\s*(.+)$", c.source, re.M)
            if m: return m.group(1).strip()
    return ""


def notebook_title(nb) -> str:
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", c.source, re.M)
            if m: return m.group(1).strip()
    return "untitled"


# ---------------------------------------------------------------------------------------------------------------
# reproductions

def latest_runs(runs: Path, paper: str) -> list[Path]:
    "The finished run folders of `paper` under `runs` (`runs/<paper>/<config>/metrics.json`, no `INCOMPLETE.json`), newest first."
    found = [p.parent for p in (runs / paper).glob("*/metrics.json") if not (p.parent / "INCOMPLETE.json").exists()] if (runs / paper).is_dir() else []
    return sorted(found, key=lambda p: (-(p / "metrics.json").stat().st_mtime, p.name))


MEASURED = "latest tiny run"  # the claims-table column of a method page that the latest runs fill


def latest_claims(runs: Path, scale: str = "tiny") -> dict[str, tuple[str, dict]]:
    "Claim id -> (run label, claim) over every paper's latest complete run at `scale` (the newest run wins an id)."
    from selfalign.report import read_metrics
    found: dict[str, tuple[str, dict]] = {}
    for paper in sorted(p.name for p in PAPERS.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for run in reversed(latest_runs(runs, paper)):  # oldest first: a newer run overwrites
            m = read_metrics(run / "metrics.json")
            if m.get("scale") != scale: continue
            seeds = m.get("seeds") or [m["seed"]]
            label = f"{paper}/{m['config']}, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
            for c in m["claims"]: found[c["id"]] = (label, c)
    return found


def measured_cell(c: dict) -> str:
    "A claim as one table cell: value, 95% interval, verdict (holds in bold)."
    from selfalign.report import _fmt, claim_cells
    verdict = claim_cells(c)[4]
    return " ".join([_fmt(c["value"]), *([_fmt(c["ci95"])] if c.get("ci95") else []), verdict])


def fill_measured(page: str, claims: dict[str, tuple[str, dict]]) -> str:
    """A method page with the last column of its claims tables — the tables whose last header cell is `MEASURED` —
    filled from `claims` (`latest_claims`) by the claim id in each row's first cell; an id no run wrote reads "not run"."""
    out, in_table = [], False
    for line in page.split("\n"):
        cells = line.strip().strip("|").split("|") if line.startswith("|") else None
        if cells is None: in_table = False
        elif cells[-1].strip() == MEASURED: in_table = True
        elif in_table and not set(line) <= set("|-: "):
            cid = cells[0].strip().strip("`")
            cells[-1] = " " + (measured_cell(claims[cid][1]) if cid in claims else "not run") + " "
            line = "|" + "|".join(cells) + "|"
        out.append(line)
    return "\n".join(out)


def reproduction_page(paper: str, run_dirs: list[Path], dest: Path) -> str:
    "The markdown of a paper's reproductions page; its figures are copied beside it under `dest`."
    from selfalign.report import CLAIM_HEADER, _fmt, _md_table, _table_rows, claim_cells, read_metrics, verdict_counts
    title = PAPER_TITLES.get(paper, paper)
    md = [f"# {title}: reproduction", ""]
    if not run_dirs:
        md += [f"No run of `{paper}` was found when this site was built. Run `make reproduce` (or "
               f"`selfalign reproduce {paper} --scale tiny --out runs`) and build the docs again.", ""]
        return "\n".join(md)
    md += [f"Read from the latest run folder of each config (`runs/{paper}/<config>/`) when the site was built; the docs "
           "never re-run training. A claim's verdict comes from its 95% interval against its threshold: it **holds** when "
           "the whole interval is on the claim's side, *fails* when the whole interval is on the other side, and is "
           "*inconclusive* when the interval spans the threshold. A claim that does not hold is a finding at that scale.", ""]
    for run in sorted(run_dirs, key=lambda p: p.name):
        m = read_metrics(run / "metrics.json")
        seeds = m.get("seeds") or [m["seed"]]
        md += [f"## {m['config']} ({m['scale']} scale)", "",
               f"{'Seeds ' + ', '.join(map(str, seeds)) + ' (claims pooled over seeds × prompts)' if len(seeds) > 1 else f'Seed {seeds[0]}'}, "
               f"wall time {_fmt(m.get('wall_s'))} s. Verdicts: {verdict_counts(m['claims'])}.", "", "### Claims", ""]
        rows = [claim_cells(c) for c in m["claims"]]
        md += [_md_table([h for h in CLAIM_HEADER if h not in ("paper", "config")], rows) if rows else "_no claims_", ""]
        figs = sorted(run.glob("*.png"))
        if figs:
            md += ["### Figures", ""]
            (dest / run.name).mkdir(parents=True, exist_ok=True)
            for f in figs:
                shutil.copy2(f, dest / run.name / f.name)
                md += [f"![{f.stem}]({paper}/{run.name}/{f.name})", ""]
        for name, rows in m["tables"].items():
            if not rows: continue
            header, body = _table_rows(rows)
            md += [f"### Table: {name}", "", _md_table(header, body), ""]
    return "\n".join(md)


# ---------------------------------------------------------------------------------------------------------------
# the site

def api_modules(pkg: Path = ROOT / "selfalign") -> list[str]:
    "Every public module of the package, dotted under it (`objectives.losses`, `cli`), in layer order."
    mods = []
    for p in pkg.rglob("*.py"):
        rel = p.relative_to(pkg).with_suffix("").parts
        if p.stem == "__init__": rel = rel[:-1]
        if len(rel) < (2 if p.stem == "__init__" else 1): continue  # the package and its layers' __init__s
        if any(part.startswith(("_", ".")) for part in rel) or "assets" in rel: continue
        mods.append(".".join(rel))
    return [m for _, ms in by_layer(sorted(mods), sep=".") for m in ms]


def _toctree(caption: str, entries: list[str], hidden: bool = True) -> str:
    return "\n".join(["```{toctree}", f":caption: {caption}", ":maxdepth: 1", *([":hidden:"] if hidden else []), "",
                      *entries, "```", ""])


def _by_layer_sections(names: list[str], label, summary=None, sep: str = "/", top: str = "Top level") -> str:
    """One `##` heading per layer folder (layer order), its one-line description, and a toctree of its entries (titled
    `label(entry)`, or the page's own title when that is None). With `summary`, the entries are a list of links with
    their summaries and the toctree (the site's navigation) is hidden."""
    md = []
    for layer, entries in by_layer(names, sep):
        md += [f"## `{layer}/`" if layer else f"## {top}", ""]
        if layer and LAYERS.get(layer): md += [LAYERS[layer][0].upper() + LAYERS[layer][1:] + ".", ""]
        if summary: md += [f"- [`{label(e)}`]({e}.ipynb)" + (f": {summary(e)}" if summary(e) else "") for e in entries] + [""]
        md += ["```{toctree}", ":maxdepth: 1", *([":hidden:"] if summary else []), "",
               *[f"{label(e)} <{e}>" if label(e) else e for e in entries], "```", ""]
    return "\n".join(md)


def assemble(src: Path, runs: Path) -> dict:
    "Write the Sphinx source tree into `src`; returns what went into it."
    if src.exists(): shutil.rmtree(src)
    src.mkdir(parents=True)
    for f in ("conf.py", "index.md"): shutil.copy2(DOCS / f, src / f)
    shutil.copytree(DOCS / "methods", src / "methods")
    claims = latest_claims(runs)  # the method pages' claims tables show the latest tiny runs
    for page in (src / "methods").glob("*.md"): page.write_text(fill_measured(page.read_text(encoding="utf-8"), claims), encoding="utf-8")
    shutil.copy2(ROOT / "README.md", src / "README.md")
    # notebooks: nbs/<layer>/NN_name.ipynb -> the page nbs/<layer>/NN_name.html, listed by layer on nbs/index
    (src / "nbs").mkdir()
    notebooks = []
    import nbformat
    for path in find_notebooks():
        nb = process_notebook(path)
        name = notebook_id(path)
        (src / "nbs" / name).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, src / "nbs" / f"{name}.ipynb")
        notebooks.append((name, notebook_title(nb), notebook_summary(nb)))
    (src / "nbs" / "index.md").write_text(
        "# Notebooks\n\nThe library, one concept per notebook, each the source of one module, grouped by the layer "
        "folder it lives in (lowest first: a module imports only from the layers above it on this page).\n\n"
        + _by_layer_sections([n for n, _, _ in notebooks], {n: n.rsplit("/", 1)[-1] for n, _, _ in notebooks}.get,
                             {n: d for n, _, d in notebooks}.get), encoding="utf-8")
    # API reference: one page per module, api/<dotted name>.html
    (src / "api").mkdir()
    modules = api_modules()
    for mod in modules:
        (src / "api" / f"{mod}.md").write_text(f"# `selfalign.{mod}`\n\n```{{eval-rst}}\n.. automodule:: selfalign.{mod}\n"
                                               "   :members:\n   :show-inheritance:\n```\n", encoding="utf-8")
    (src / "api" / "index.md").write_text("# API reference\n\nGenerated from the exported modules' docstrings; each "
                                          "parameter's description is its comment in the notebook that defines it.\n\n"
                                          + _by_layer_sections(modules, lambda m: None, sep=".", top="Top level: the command line and the report"),
                                          encoding="utf-8")
    # reproductions
    rdir = src / "reproductions"; rdir.mkdir()
    papers = sorted(p.name for p in PAPERS.iterdir() if p.is_dir() and not p.name.startswith("_") and (p / "reproduce.ipynb").exists())
    found = {}
    for paper in papers:
        runs_of = latest_runs(runs, paper)
        found[paper] = [r.name for r in runs_of]
        (rdir / f"{paper}.md").write_text(reproduction_page(paper, runs_of, rdir / paper), encoding="utf-8")
    (rdir / "index.md").write_text("# Reproductions\n\nEach paper's claims, figures and tables from the latest run in "
                                   f"`{runs}`.\n\n" + _toctree("Papers", papers, hidden=False), encoding="utf-8")
    # the index's toctrees (the hand-written index.md ends where they go)
    methods = sorted(p.stem for p in (DOCS / "methods").glob("*.md"))
    order = [m for m in ("dpo", "dlma", "almost", "self_contrast", "salmon") if m in methods] + \
            [m for m in methods if m not in ("dpo", "dlma", "almost", "self_contrast", "salmon")]
    with open(src / "index.md", "a", encoding="utf-8") as f:
        f.write("\n" + _toctree("Methods", [f"methods/{m}" for m in order]))
        f.write(_toctree("Notebooks", ["nbs/index"]))
        f.write(_toctree("Reproductions", ["reproductions/index"]))
        f.write(_toctree("Reference", ["api/index"]))
    return {"notebooks": notebooks, "papers": found, "modules": modules, "methods": order}


def mathjax_dir() -> Path:
    import jupyter_server_mathjax
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def build(runs: Path, out: Path, quiet: bool = False) -> dict:
    "Assemble the source tree next to `out` and run Sphinx into `out`; returns a summary."
    src = out.parent / "src"
    info = assemble(src, runs)
    if out.exists(): shutil.rmtree(out)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
           "-d", str(out.parent / "doctrees"), str(src), str(out)]
    r = subprocess.run(cmd, cwd=src, text=True, capture_output=True)
    if r.returncode != 0:
        raise SystemExit(f"sphinx-build failed ({r.returncode}):\n{r.stderr[-8000:]}\n{r.stdout[-2000:]}")
    shutil.copytree(mathjax_dir(), out / "_static" / "mathjax", dirs_exist_ok=True)
    info["index"] = str(out / "index.html")
    return info


# ---------------------------------------------------------------------------------------------------------------
# committed outputs

_SKIP = re.compile(r"^#\|\s*(eval:\s*false|notest|slow)\b", re.M)


def clean_outputs(nb) -> None:
    "Keep outputs small and deterministic: no stderr (warnings, progress bars), no carriage-return redraws."
    for c in nb.cells:
        if c.cell_type != "code": continue
        keep = []
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                if o.get("name") == "stderr": continue
                text = "".join(l for l in o.text.splitlines(True) if "\r" not in l and not _PROGRESS.search(l))
                if not text: continue
                o.text = text
            keep.append(o)
        c.outputs = keep


def execute(paths: list[Path], timeout: int = 900) -> None:
    "Execute notebooks in place (cells flagged `eval: false`/`notest`/`slow` skipped), then clean their outputs."
    import nbformat
    from nbclient import NotebookClient
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        skipped = {i: c.source for i, c in enumerate(nb.cells) if c.cell_type == "code" and _SKIP.search(c.source)}
        for i in skipped: nb.cells[i].source = "pass  # skipped when executing for the docs"
        print(f"executing {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", file=sys.stderr, flush=True)
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
        for i, s in skipped.items(): nb.cells[i].source, nb.cells[i].outputs = s, []
        clean_outputs(nb)
        nbformat.write(nb, path)
    subprocess.run([str(Path(sys.executable).parent / "nbdev-clean")], cwd=ROOT, check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="docs/build.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the site")
    b.add_argument("--runs", default=str(ROOT / "runs"), help="the reproduce output folder to read (default: runs/)")
    b.add_argument("--out", default=str(DOCS / "_build" / "html"), help="where the HTML goes")
    c = sub.add_parser("claims", help=f"fill the '{MEASURED}' column of docs/methods/*.md from the latest runs, in place")
    c.add_argument("--runs", default=str(ROOT / "runs"), help="the reproduce output folder to read (default: runs/)")
    o = sub.add_parser("outputs", help="re-execute notebooks and save their cleaned outputs")
    o.add_argument("notebooks", nargs="*", help="notebooks or folders of them (default: every nbs/**/NN_*.ipynb)")
    a = ap.parse_args(argv)
    if a.cmd == "build":
        info = build(Path(a.runs).resolve(), Path(a.out).resolve())
        print(f"docs: {len(info['notebooks'])} notebooks, {len(info['modules'])} modules, reproductions "
              + ", ".join(f"{p} ({len(r)} run{'s' if len(r) != 1 else ''})" for p, r in info["papers"].items()))
        print(f"docs: {info['index']}")
    elif a.cmd == "claims":
        claims = latest_claims(Path(a.runs).resolve())
        for page in sorted((DOCS / "methods").glob("*.md")):
            text = page.read_text(encoding="utf-8"); new = fill_measured(text, claims)
            if new != text: page.write_text(new, encoding="utf-8"); print(f"docs: {page.relative_to(ROOT)} updated")
    else:
        paths = [q for p in map(Path, a.notebooks) for q in (find_notebooks(p.resolve()) if p.is_dir() else [p.resolve()])]
        if a.notebooks and not paths: raise SystemExit(f"no notebooks in {' '.join(a.notebooks)}")
        execute(paths if a.notebooks else find_notebooks())
    return 0


if __name__ == "__main__":
    sys.exit(main())
