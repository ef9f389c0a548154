"""Sphinx configuration of the selfalign site (assembled and built by docs/build.py; see `make docs`)."""
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

project = "selfalign"
author = "the selfalign authors"
copyright = "selfalign authors, Apache-2.0"
extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.mathjax"]
exclude_patterns = ["_build", "README.md", "**.ipynb_checkpoints"]
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # pages show the notebooks' saved outputs; the docs never run training
nb_merge_streams = True
suppress_warnings = ["myst.header", "misc.highlighting_failure"]

html_theme = "sphinx_book_theme"
html_title = "selfalign"
html_theme_options = {"home_page_in_toc": True, "show_navbar_depth": 1, "use_download_button": False,
                      "use_fullscreen_button": False}
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False

# MathJax 2 from the site itself (the jupyter-server-mathjax wheel), so math renders without a network.
html_static_path = []  # build.py copies MathJax into _static/mathjax after the build (12 MB Sphinx need not walk)
mathjax_path = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"
mathjax2_config = {"tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]], "processEscapes": True,
                                "ignoreClass": "tex2jax_ignore|mathjax_ignore", "processClass": "math"},
                   "HTML-CSS": {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web", "imageFont": None},
                   "showMathMenu": False, "messageStyle": "none"}  # the wheel ships the STIX-Web fonts only

autodoc_member_order = "bysource"
autodoc_default_options = {"undoc-members": False}
autodoc_typehints = "signature"


_CODE = re.compile(r"(?<!`)`([^`]+)`(?!`)(\w?)")


def _rst(text: str) -> str:
    "Markdown code spans (`x`, `x`s) as RST literals (``x``, ``x``\ s)."
    return _CODE.sub(lambda m: f"``{m.group(1)}``" + (f"\\ {m.group(2)}" if m.group(2) else ""), text)


def _param_comments(app, what, name, obj, options, lines):
    "Markdown code spans as RST literals; each parameter's comment in its notebook (nbdev's docments) as a field."
    lines[:] = [_rst(l) for l in lines if not l.startswith("Docs: https://")]  # nbdev's link to a Quarto site
    if what not in ("function", "method", "class"): return
    try:
        from fastcore.docments import docments
        docs = docments(obj, full=False)
    except Exception:
        return
    params = [(k, v) for k, v in docs.items() if k != "return" and v]
    if not params: return
    if lines and lines[-1].strip(): lines.append("")
    for k, v in params: lines.append(f":param {k}: {_rst(v)}")
    if docs.get("return"): lines.append(f":returns: {_rst(docs['return'])}")


def setup(app):
    app.connect("autodoc-process-docstring", _param_comments)
