"""The report of a `selfalign reproduce` run: `REPORT.md` and `report.html` in the output folder.

Per paper a count of its claims' verdicts (holds · fails · inconclusive), one table of every claim of every run
(paper, config, claim, value, 95% CI, threshold, verdict), then per run its tables and figures (read from the run
folder's `metrics.json` and PNG files), the wall times, failed or interrupted notebooks with the error and where their
executed copy is, the notebooks an interruption left unrun, and the environment. The HTML is self-contained apart from
the figures, which it links relatively, so the output folder can be moved or served as it is.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from .core.base import VERDICTS, MetricsError, atomic_write_text, validate_metrics


@dataclass
class RunRecord:
    "What the report needs to know about one executed notebook."
    paper: str
    config: str
    scale: str
    out_dir: Path
    status: str  # ok | failed | interrupted
    seconds: float
    error: str = ""
    notebook: str = "reproduce.ipynb"

    @property
    def ok(self) -> bool: return self.status == "ok"


def _fmt(v) -> str:
    if v is None: return "—"
    if isinstance(v, bool): return "yes" if v else "no"
    if isinstance(v, float): return f"{v:.4g}"
    if isinstance(v, (list, tuple)): return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict): return json.dumps(v, ensure_ascii=False)
    return str(v)




def _verdict(claim: dict) -> str:
    "A claim's verdict; a claim recorded before verdicts existed has its `holds` read as holds or fails."
    return claim.get("verdict") or ("holds" if claim.get("holds") else "fails")


def read_metrics(p: Path) -> dict:
    "A run's `metrics.json`, validated (`MetricsError`, `json.JSONDecodeError`); a claim written before verdicts existed gets one from `holds`."
    m = json.loads(Path(p).read_text(encoding="utf-8"))
    claims = m.get("claims") if isinstance(m, dict) else None
    for c in claims if isinstance(claims, list) else []:
        if isinstance(c, dict) and "verdict" not in c: c["verdict"] = _verdict(c)
    return validate_metrics(m, str(p))


def _metrics(r: RunRecord) -> tuple[dict | None, str]:
    p = r.out_dir / "metrics.json"
    if not p.exists(): return None, "no metrics.json"
    try: return read_metrics(p), ""
    except (json.JSONDecodeError, MetricsError) as e: return None, f"unreadable metrics.json: {e}"


def _claims(runs: list[RunRecord], metrics: dict) -> list[tuple[RunRecord, dict]]:
    return [(r, c) for r in runs for c in (metrics.get(id(r)) or {}).get("claims", [])]


def claim_cells(c: dict) -> list[str]:
    "A claim as table cells: id, value, 95% CI, threshold, verdict (holds in bold), statement."
    return [c["id"], _fmt(c["value"]), _fmt(c["ci95"]), _fmt(c["threshold"]), "**holds**" if _verdict(c) == "holds" else _verdict(c),
            c["statement"]]


def _claim_rows(claims: list[tuple[RunRecord, dict]]) -> list[list[str]]:
    return [[r.paper, r.config, *claim_cells(c)] for r, c in claims]


def verdict_counts(claims: list[dict]) -> str:
    "'holds N · fails N · inconclusive N' (and any other verdict found)."
    n = dict.fromkeys(VERDICTS, 0)
    for c in claims: n[_verdict(c)] = n.get(_verdict(c), 0) + 1
    return " · ".join(f"{v} {k}" for v, k in n.items())


CLAIM_HEADER = ["paper", "config", "claim", "value", "95% CI", "threshold", "verdict", "statement"]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    cell = lambda s: html.escape(str(s)).replace("**holds**", "<b>holds</b>")
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


def write_report(out: str | Path, runs: list[RunRecord], not_run: list[str] = ()) -> tuple[Path, Path]:
    "Write `REPORT.md` and `report.html` for `runs` (and the `paper/config`s an interruption left `not_run`) into `out`."
    out = Path(out).resolve(); out.mkdir(parents=True, exist_ok=True)
    metrics, problems = {}, {}
    for r in runs:
        m, why = _metrics(r) if r.ok else (None, "")
        metrics[id(r)] = m
        if r.ok and m is None: problems[id(r)] = why
    found = _claims(runs, metrics)
    claims = _claim_rows(found)
    counts = [(p, verdict_counts([c for r, c in found if r.paper == p])) for p in dict.fromkeys(r.paper for r, _ in found)]
    failed = [r for r in runs if r.status == "failed"]
    interrupted = [r for r in runs if r.status == "interrupted"]
    rel = lambda p: Path(p).resolve().relative_to(out).as_posix() if Path(p).resolve().is_relative_to(out) else str(p)
    scales = sorted({r.scale for r in runs})
    title = f"selfalign reproduction report ({', '.join(scales)})"
    verdicts = f": {verdict_counts([c for _, c in found])}" if found else ""
    summary = (f"{len(runs)} notebook(s), {len(failed)} failed" + (f", {len(interrupted)} interrupted" if interrupted else "")
               + f"; {len(claims)} claim(s){verdicts}. "
               "A claim that fails or is inconclusive is a finding at this scale, not a failure of the run.")
    stopped = f"Interrupted (Ctrl-C); not run: {', '.join(not_run)}." if not_run else ""
    runs_rows = [[r.paper, r.config, r.scale, r.status if r.ok else r.status.upper(), f"{r.seconds:.1f}", rel(r.out_dir)]
                 for r in runs]
    md = [f"# {title}", "", summary, "", *([stopped, ""] if stopped else []), "## Claims", "",
          *[f"- **{p}**: {line}" for p, line in counts], *([""] if counts else []),
          _md_table(CLAIM_HEADER, claims) if claims else "_no claims recorded_", "", "## Runs", "",
          _md_table(["paper", "config", "scale", "status", "wall time (s)", "folder"], runs_rows), ""]
    hb = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(summary)}</p>",
          *([f"<p class=\"failed\">{html.escape(stopped)}</p>"] if stopped else []), "<h2>Claims</h2>",
          *(["<ul>" + "".join(f"<li><b>{html.escape(p)}</b>: {html.escape(line)}</li>" for p, line in counts) + "</ul>"]
            if counts else []),
          _html_table(CLAIM_HEADER, claims) if claims else "<p><i>no claims recorded</i></p>", "<h2>Runs</h2>",
          _html_table(["paper", "config", "scale", "status", "wall time (s)", "folder"], runs_rows)]
    for r in runs:
        head = f"{r.paper} / {r.config}"
        md += [f"## {head}", ""]; hb += [f"<h2 id=\"{html.escape(r.paper)}-{html.escape(r.config)}\">{html.escape(head)}</h2>"]
        if not r.ok:
            word, nb = r.status.upper(), rel(r.out_dir / r.notebook)
            kept = (r.out_dir / r.notebook).is_file()
            md += [f"**{word}** after {r.seconds:.1f}s: `{r.error}`", ""]
            hb += [f"<p class=\"failed\"><b>{word}</b> after {r.seconds:.1f}s: <code>{html.escape(r.error)}</code></p>"]
            if kept:
                md += [f"Executed copy kept for inspection: `{nb}`", ""]
                hb += [f"<p>Executed copy kept for inspection: <a href=\"{html.escape(nb)}\">{html.escape(nb)}</a></p>"]
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
