"""The docs site, read as a reader would: built from the notebooks' saved outputs and the latest runs, then opened in
headless Chromium with networking off (title, figures loaded, math typeset, screenshots not blank, no broken link)."""
import importlib.util
import json
import re
import subprocess
import sys

import nbformat
import pytest

from conftest import ROOT


def _load(name):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", ROOT / "docs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


browser, build = _load("browser"), _load("build")
PAPERS = sorted(p.parent.name for p in (ROOT / "papers").glob("[!_]*/reproduce.ipynb"))
NOTEBOOKS = build.find_notebooks()  # nbs/<layer>/NN_name.ipynb, every folder, found anew each run


@pytest.fixture(scope="module")
def site(tiny_run, tmp_path_factory):
    runs = tiny_run(*PAPERS)  # the papers no other worker is running first
    out = tmp_path_factory.mktemp("site") / "html"
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "build.py"), "build", "--runs", str(runs), "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-4000:] + r.stdout[-2000:]
    assert f"docs: {out / 'index.html'}" in r.stdout
    return out


def test_browser_reads_the_index_and_every_reproduction_page(site, tmp_path):
    seen = browser.check_site(site, shots=tmp_path)
    assert seen["isolation"]  # started with networking off
    pages = {browser.Path(p["page"]).relative_to(site).as_posix(): p for p in seen["pages"]}
    assert pages["index.html"]["title"].startswith("selfalign")
    assert pages["nbs/index.html"]["title"].startswith("Notebooks")  # the notebooks, one heading per layer folder
    assert any(k.startswith("nbs/") and k.count("/") == 2 for k in pages), list(pages)  # a notebook, nbs/<layer>/…
    for paper in PAPERS:
        p = pages[f"reproductions/{paper}.html"]
        assert p["title"].startswith(build.PAPER_TITLES.get(paper, paper)), p["title"]
        assert p["images"] and all(i["ok"] and i["w"] > 100 and i["h"] > 100 for i in p["images"]), p["images"]
    for p in seen["pages"]:
        assert p["blank_fraction"] < 0.97, p  # a blank page is 1.0
        assert (tmp_path / browser.Path(p["screenshot"]).name).stat().st_size > 10_000
    method = next(p for k, p in pages.items() if k.startswith("methods/"))
    assert method["math"] > 0 and method["raw_math"] == 0, method  # MathJax, served by the site itself, typeset it


def test_no_internal_link_or_anchor_is_broken(site):
    assert browser.broken_links(site) == []


def test_pages_cover_methods_notebooks_api_and_reproductions(site):
    for nb in NOTEBOOKS:  # nbs/<layer>/NN_name.ipynb -> nbs/<layer>/NN_name.html
        html = (site / "nbs" / f"{build.notebook_id(nb)}.html").read_text(encoding="utf-8")
        assert "#| export" not in html and "#| default_exp" not in html and "#|" not in html, nb.name
    losses = (site / "nbs" / "objectives" / "03_losses.html").read_text(encoding="utf-8")
    assert re.search(r"<h[2-6][^>]*>dpo_loss<", losses)  # the exported function's card
    assert "strength of the KL constraint" in losses  # its documented parameter, from the notebook's comment
    api = (site / "api" / "objectives.losses.html").read_text(encoding="utf-8")
    assert "selfalign.objectives.losses.dpo_loss" in api and "strength of the KL constraint" in api
    for mod in build.api_modules(): assert (site / "api" / f"{mod}.html").exists(), mod  # one page per module
    assert {"core.base", "objectives.losses", "bands.dpo", "cli"} <= set(build.api_modules())
    for m in ("dpo", "dlma", "almost", "self_contrast", "salmon"):
        page = (site / "methods" / f"{m}.html").read_text(encoding="utf-8")
        assert "latest tiny run" in page and "not run<" not in page, m  # the claims table, filled from the tiny runs
    assert 'href="../nbs/bands/12_dpo.html"' in (site / "methods" / "dpo.html").read_text(encoding="utf-8")
    dpo = (site / "reproductions" / "dpo.html").read_text(encoding="utf-8")
    assert "dpo-rm-accuracy" in dpo and "frontier.png" in dpo
    assert re.search(r"Verdicts: holds \d+ · fails \d+ · inconclusive \d+", dpo)  # the verdicts, counted
    assert ">verdict<" in dpo  # the claims table's verdict column
    # notebooks render with their saved outputs: a figure saved in a notebook shows on its page
    with_images = [build.notebook_id(nb) for nb in NOTEBOOKS
                   if any(o.get("data", {}).get("image/png") for c in nbformat.read(nb, 4).cells for o in c.get("outputs", []))]
    assert with_images
    for name in with_images: assert "<img" in (site / "nbs" / f"{name}.html").read_text(encoding="utf-8"), name


def test_notebooks_page_lists_every_notebook_under_its_layer_in_layer_order(site):
    html = (site / "nbs" / "index.html").read_text(encoding="utf-8")
    main = html[html.index("<main"):]
    heads = [(m.start(), m.group(1)) for m in re.finditer(r'<h2[^>]*><code[^>]*><span class="pre">(\w+)/</span>', main)]
    layers = [l for l in build.LAYERS if any(build.notebook_id(nb).startswith(f"{l}/") for nb in NOTEBOOKS)]
    assert [l for _, l in heads] == layers, heads  # core, data, models, generate, objectives, …, bands
    for nb in NOTEBOOKS:  # each notebook's link sits under its own layer's heading
        name = build.notebook_id(nb)
        at = main.index(f'href="{name}.html"')
        assert max((h for h in heads if h[0] < at), default=(0, None))[1] == name.split("/")[0], name
    index = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="nbs/index.html"' in index and 'href="api/index.html"' in index


def test_notebooks_and_modules_are_found_in_any_folder_in_layer_order(tmp_path):
    "A notebook added later (a new layer folder, a new judge) is picked up without editing the docs builder."
    for rel in ("bands/00_base", "judges/43_llm", "core/00_base", "zeta/01_new", "07_top", "world/.ipynb_checkpoints/06_x",
                "data/_draft/01_y", "data/notes"):
        (tmp_path / f"{rel}.ipynb").parent.mkdir(parents=True, exist_ok=True); (tmp_path / f"{rel}.ipynb").write_text("{}")
    found = [build.notebook_id(p, tmp_path) for p in build.find_notebooks(tmp_path)]
    assert found == ["core/00_base", "judges/43_llm", "bands/00_base", "zeta/01_new", "07_top"], found
    assert build.by_layer(["bands.dpo", "cli", "core.base", "eval.policy"], sep=".") == \
        [("core", ["core.base"]), ("eval", ["eval.policy"]), ("bands", ["bands.dpo"]), ("", ["cli"])]
    pkg = tmp_path / "pkg"
    for rel in ("__init__.py", "_modidx.py", "cli.py", "core/__init__.py", "core/base.py", "data/corpora/__init__.py",
                "data/corpora/hh.py", "data/_private.py", "assets/world/x.py"):
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True); (pkg / rel).write_text("")
    assert build.api_modules(pkg) == ["core.base", "data.corpora", "data.corpora.hh", "cli"]


def test_a_page_without_runs_says_how_to_make_them(tmp_path):
    md = build.reproduction_page("dpo", [], tmp_path)
    assert "make reproduce" in md and "selfalign reproduce dpo --scale tiny" in md


def test_link_checker_and_blank_check_catch_what_they_should(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "index.html").write_text('<a href="sub/page.html#here">ok</a> <a href="sub/page.html#gone">x</a>'
                                         '<a href="missing.html">y</a><img src="nope.png"><a href="https://example.org">e</a>')
    (tmp_path / "sub" / "page.html").write_text('<h2 id="here">h</h2><a href="../index.html">back</a>')
    broken = browser.broken_links(tmp_path)
    assert len(broken) == 3 and any("#gone" in b for b in broken) and any("missing.html" in b for b in broken)
    from PIL import Image
    import io
    buf = io.BytesIO(); Image.new("RGB", (64, 64), "white").save(buf, "PNG")
    assert browser.blank_fraction(buf.getvalue()) == 1.0


def test_committed_notebook_outputs_are_small_and_deterministic():
    "No progress bars, timings, stderr, memory addresses or execution counts; a bounded size per notebook."
    noisy = re.compile(r"\r|\d+(\.\d+)?\s*(it/s|s/it)|\d+%\|| at 0x[0-9a-f]{6,}|\b\d+(\.\d+)?\s*(ms|seconds?)\b|elapsed|127\.0\.0\.1")
    with_outputs = 0
    for nb_path in NOTEBOOKS:
        nb = nbformat.read(nb_path, 4)
        size = 0
        for i, c in enumerate(nb.cells):
            if c.cell_type != "code": continue
            assert c.get("execution_count") is None, f"{build.notebook_id(nb_path)} cell {i}: execution count kept"
            for o in c.get("outputs", []):
                assert o.get("execution_count") is None, f"{build.notebook_id(nb_path)} cell {i}"
                assert not (o.output_type == "stream" and o.name == "stderr"), f"{build.notebook_id(nb_path)} cell {i}: stderr kept"
                text = o.get("text", "") if o.output_type == "stream" else "".join(o.get("data", {}).get("text/plain", ""))
                m = noisy.search(text)
                assert not m, f"{build.notebook_id(nb_path)} cell {i}: {m.group(0)!r} in a saved output"
                size += len(json.dumps(o))
        with_outputs += size > 0
        assert size < 400_000, f"{build.notebook_id(nb_path)}: {size} bytes of saved outputs"
    assert with_outputs >= 10, with_outputs


def test_make_docs_builds_the_site_with_pinned_requirements():
    mk = (ROOT / "Makefile").read_text()
    m = re.search(r"^docs:([^\n#]*)(?:##[^\n]*)?\n((?:\t[^\n]*\n)*)", mk, re.M)
    assert m and "docs/build.py build" in m.group(2) and "docs/_build/html" in m.group(2), "make docs recipe"
    pins = [l.split("#")[0].strip() for l in (ROOT / "requirements" / "docs.txt").read_text().splitlines()]
    pins = [p for p in pins if p]
    assert pins and all("==" in p for p in pins), pins
    assert {"sphinx", "myst-nb", "sphinx-book-theme", "jupyter-server-mathjax"} <= {p.split("==")[0] for p in pins}


def test_method_pages_claims_column_comes_from_the_latest_runs():
    "`fill_measured`: a claims table whose last header is 'latest tiny run' gets value, interval and verdict by claim id."
    page = ("Text | not a table\n\n| claim | what it states | latest tiny run |\n|---|---|---|\n"
            "| `a-holds` | A holds | stale |\n| `b-missing` | B | stale |\n\n| claim | other | one run |\n|---|---|---|\n| `a-holds` | x | kept |\n")
    claims = {"a-holds": ("p/main, seed 0", {"id": "a-holds", "value": 0.571, "ci95": [0.525, 0.617], "threshold": 0.5,
                                              "verdict": "holds", "holds": True, "statement": "A holds"})}
    out = build.fill_measured(page, claims).splitlines()
    assert out[4] == "| `a-holds` | A holds | 0.571 [0.525, 0.617] **holds** |"
    assert out[5] == "| `b-missing` | B | not run |"
    assert out[-1] == "| `a-holds` | x | kept |" and out[:2] == page.splitlines()[:2]  # another table, and prose, untouched
    for path in sorted((ROOT / "docs" / "methods").glob("*.md")):  # every method page has such a table, one row per claim id
        text = path.read_text(encoding="utf-8")
        assert f"| {build.MEASURED} |" in text, path.name
        rows = [l for l in build.fill_measured(text, {}).splitlines() if l.endswith("| not run |")]
        assert rows and all(re.match(r"\| `[a-z0-9-]+` \|", l) for l in rows), path.name
