"""The report of a `selfalign reproduce` run: `REPORT.md` and `report.html` in the output folder.

One table of every claim of every run (paper, config, claim, value, 95% CI, threshold, holds), then per run its
tables and figures (read from the run folder's `metrics.json` and PNG files), the wall times, failed notebooks with
the error and where their executed copy is, and the environment. The HTML is self-contained apart from the figures,
which it links relatively, so the output folder can be moved or served as it is.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from .core.base import MetricsError, atomic_write_text, validate_metrics


@dataclass
class RunRecord:
    "What the report needs to know about one executed notebook."
    paper: str
    config: str
    scale: str
    out_dir: Path
    ok: bool
    seconds: float
    error: str = ""
    notebook: str = "reproduce.ipynb"


def _fmt(v) -> str:
    if v is None: return "—"
    if isinstance(v, bool): return "yes" if v else "no"
    if isinstance(v, float): return f"{v:.4g}"
    if isinstance(v, (list, tuple)): return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict): return json.dumps(v, ensure_ascii=False)
    return str(v)


def _metrics(r: RunRecord) -> tuple[dict | None, str]:
    p = r.out_dir / "metrics.json"
    if not p.exists(): return None, "no metrics.json"
    try: return validate_metrics(json.loads(p.read_text(encoding="utf-8")), str(p)), ""
    except (json.JSONDecodeError, MetricsError) as e: return None, f"unreadable metrics.json: {e}"


def _claim_rows(runs: list[RunRecord], metrics: dict) -> list[list[str]]:
    rows = []
    for r in runs:
        m = metrics.get(id(r))
        for c in (m or {}).get("claims", []):
            rows.append([r.paper, r.config, c["id"], _fmt(c["value"]), _fmt(c["ci95"]), _fmt(c["threshold"]),
                         "**yes**" if c["holds"] else "no", c["statement"]])
    return rows


CLAIM_HEADER = ["paper", "config", "claim", "value", "95% CI", "threshold", "holds", "statement"]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    cell = lambda s: html.escape(str(s)).replace("**yes**", "<b>yes</b>")
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows) + "</tbody></table>")


def _table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = list(dict.fromkeys(k for r in rows for k in r))
    return header, [[_fmt(r.get(k)) for k in header] for r in rows]


def _env(runs: list[RunRecord]) -> dict:
    for r in runs:
        p = r.out_dir / "env.json"
        if p.exists():
            try: return json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError: pass
    return {}


CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:.85em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}"
       "th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.failed{color:#b00}code{background:#f5f5f5;padding:0 .2em}")


def write_report(out: str | Path, runs: list[RunRecord]) -> tuple[Path, Path]:
    "Write `REPORT.md` and `report.html` for `runs` into `out`; returns their paths."
    out = Path(out).resolve(); out.mkdir(parents=True, exist_ok=True)
    metrics, problems = {}, {}
    for r in runs:
        m, why = _metrics(r) if r.ok else (None, "")
        metrics[id(r)] = m
        if r.ok and m is None: problems[id(r)] = why
    claims = _claim_rows(runs, metrics)
    n_claims, n_hold = len(claims), sum(row[6] == "**yes**" for row in claims)
    failed = [r for r in runs if not r.ok]
    rel = lambda p: Path(p).resolve().relative_to(out).as_posix() if Path(p).resolve().is_relative_to(out) else str(p)
    scales = sorted({r.scale for r in runs})
    title = f"selfalign reproduction report ({', '.join(scales)})"
    summary = (f"{len(runs)} notebook(s), {len(failed)} failed; {n_claims} claim(s), {n_hold} hold. "
               "A claim that does not hold is a finding at this scale, not a failure of the run.")
    md = [f"# {title}", "", summary, "", "## Claims", "",
          _md_table(CLAIM_HEADER, claims) if claims else "_no claims recorded_", "", "## Runs", "",
          _md_table(["paper", "config", "scale", "status", "wall time (s)", "folder"],
                    [[r.paper, r.config, r.scale, "ok" if r.ok else "FAILED", f"{r.seconds:.1f}", rel(r.out_dir)] for r in runs]), ""]
    hb = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(summary)}</p>", "<h2>Claims</h2>",
          _html_table(CLAIM_HEADER, claims) if claims else "<p><i>no claims recorded</i></p>", "<h2>Runs</h2>",
          _html_table(["paper", "config", "scale", "status", "wall time (s)", "folder"],
                      [[r.paper, r.config, r.scale, "ok" if r.ok else "FAILED", f"{r.seconds:.1f}", rel(r.out_dir)] for r in runs])]
    for r in runs:
        head = f"{r.paper} / {r.config}"
        md += [f"## {head}", ""]; hb += [f"<h2 id=\"{html.escape(r.paper)}-{html.escape(r.config)}\">{html.escape(head)}</h2>"]
        if not r.ok:
            nb = rel(r.out_dir / r.notebook)
            md += [f"**FAILED** after {r.seconds:.1f}s: `{r.error}`", "", f"Executed copy kept for inspection: `{nb}`", ""]
            hb += [f"<p class=\"failed\"><b>FAILED</b> after {r.seconds:.1f}s: <code>{html.escape(r.error)}</code></p>",
                   f"<p>Executed copy kept for inspection: <a href=\"{html.escape(nb)}\">{html.escape(nb)}</a></p>"]
            continue
        m = metrics[id(r)]
        if m is None:
            md += [f"_{problems[id(r)]}_", ""]; hb += [f"<p><i>{html.escape(problems[id(r)])}</i></p>"]
            continue
        for name, rows in m["tables"].items():
            if not rows: continue
            header, body = _table_rows(rows)
            md += [f"### {name}", "", _md_table(header, body), ""]
            hb += [f"<h3>{html.escape(name)}</h3>", _html_table(header, body)]
        for fig in sorted(r.out_dir.glob("*.png")):
            md += [f"![{fig.stem}]({rel(fig)})", ""]
            hb += [f"<p><img src=\"{html.escape(rel(fig))}\" alt=\"{html.escape(fig.stem)}\"></p>"]
    env = _env(runs)
    if env:
        keys = [k for k in env if not isinstance(env[k], (dict, list))]
        md += ["## Environment", "", _md_table(["", ""], [[k, _fmt(env[k])] for k in keys]), ""]
        hb += ["<h2>Environment</h2>", _html_table(["", ""], [[k, _fmt(env[k])] for k in keys])]
    md_path = atomic_write_text(out / "REPORT.md", "\n".join(md) + "\n")
    html_path = atomic_write_text(out / "report.html", "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                                  f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
                                  + "\n".join(hb) + "</body></html>\n")
    return md_path, html_path
