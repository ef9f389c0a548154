"""Read the built site as a reader would: headless Chromium with networking off, driven over the DevTools protocol.

    python docs/browser.py [docs/_build/html] [--shots docs/_build/screenshots]

Chromium is started inside a fresh network namespace (`unshare -n`: no interface but a down loopback) when the
machine allows it, otherwise with every request sent to a dead proxy; either way nothing leaves the machine. The
DevTools protocol runs over a pipe (`--remote-debugging-pipe`), so no port is opened. Pages are loaded from disk
(`file://`). `check_site` loads the index, the Notebooks page (`nbs/index.html`, one heading per layer folder), one
notebook page two folders down (`nbs/<layer>/NN_name.html`, so the site's relative assets are checked from there) and
every reproduction page, checks the title, that each figure's image loaded (complete, non-zero natural size), that
MathJax typeset the math on a method page, takes screenshots and checks they are not blank; `broken_links` checks every internal link and anchor of every page.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name): return shutil.which(name)
    raise FileNotFoundError("no chromium on PATH: install Debian's `chromium` (make install-browser)")


def _can_unshare() -> bool:
    try: return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired): return False


class Browser:
    "Headless Chromium, networking off, DevTools over a pipe. Use as a context manager."

    def __init__(self, width: int = 1280, height: int = 900):
        self.width, self.height, self._id, self.isolation = width, height, 0, ""

    def __enter__(self):
        self.profile = tempfile.mkdtemp(prefix="selfalign-chromium-")
        to_chrome_r, self._w = os.pipe()  # we write commands, Chromium reads fd 3
        self._r, from_chrome_w = os.pipe()  # Chromium writes replies on fd 4
        args = [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
                "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                "--metrics-recording-only", "--mute-audio", f"--user-data-dir={self.profile}",
                f"--window-size={self.width},{self.height}", "--remote-debugging-pipe",
                "--allow-file-access-from-files", "about:blank"]
        if _can_unshare():
            args, self.isolation = ["unshare", "-n", *args], "network namespace (unshare -n)"
        else:
            args += ["--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
            self.isolation = "dead proxy"

        def fds():  # put the pipe ends where Chromium expects them
            os.dup2(to_chrome_r, 3); os.dup2(from_chrome_w, 4)
        self.proc = subprocess.Popen(args, preexec_fn=fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        os.close(to_chrome_r); os.close(from_chrome_w)
        self._buf = b""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)
        return self

    def __exit__(self, *exc):
        try: self.call("Browser.close")
        except Exception: pass
        try: self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9); self.proc.wait()
        for fd in (self._r, self._w):
            try: os.close(fd)
            except OSError: pass
        shutil.rmtree(self.profile, ignore_errors=True)

    def _read(self, timeout: float) -> dict:
        import select
        end = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer within {timeout}s")
            chunk = os.read(self._r, 1 << 20)
            if not chunk: raise RuntimeError(f"chromium exited (status {self.proc.poll()})")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params) -> dict:
        "Send one DevTools command and return its result (events that arrive meanwhile are dropped)."
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session: msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._id:
                if "error" in reply: raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def eval(self, expression: str):
        r = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r: raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def load(self, path: Path, settle: float = 15.0) -> None:
        "Open a file and wait until it and its images have loaded and MathJax (if any) has finished."
        self.call("Page.navigate", session=True, url=path.resolve().as_uri())
        end = time.monotonic() + settle
        while time.monotonic() < end:
            ready = self.eval("document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"
                              " && (typeof MathJax === 'undefined' || !MathJax.Hub || MathJax.Hub.queue.pending === 0"
                              " && MathJax.Hub.queue.running === 0)")
            if ready and self.eval("document.location.href") == path.resolve().as_uri(): return
            time.sleep(0.2)
        raise TimeoutError(f"{path} did not finish loading within {settle}s")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])


def blank_fraction(png: bytes) -> float:
    "Share of the screenshot's pixels that are the most common colour (1.0: a blank page)."
    from PIL import Image
    img = Image.open(io.BytesIO(png)).convert("RGB")
    counts = img.getcolors(maxcolors=img.width * img.height)
    return max(c for c, _ in counts) / (img.width * img.height)


def inspect_page(b: Browser, path: Path) -> dict:
    b.load(path)
    imgs = b.eval("Array.from(document.querySelectorAll('main img, article img')).map(i => ({src: i.getAttribute('src'),"
                  " ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight}))")
    return {"page": str(path), "title": b.eval("document.title"), "images": imgs,
            "math": b.eval("document.querySelectorAll('.MathJax, .MathJax_Display').length"),
            "raw_math": b.eval("Array.from(document.querySelectorAll('span.math, div.math'))"
                               ".filter(e => /\\\\\\(|\\\\\\[/.test(e.textContent)).length"),
            "h1": b.eval("(document.querySelector('h1') || {}).textContent || ''")}


def check_site(site: Path, shots: Path | None = None) -> dict:
    "Load the index, the Notebooks page, one notebook, every reproduction page and one method page; return what was seen."
    site = Path(site)
    pages = [site / "index.html", *[p for p in [site / "nbs" / "index.html"] if p.exists()],
             *sorted((site / "nbs").glob("*/*.html"))[:1], *sorted((site / "reproductions").glob("*.html"))]
    method = next(iter(sorted((site / "methods").glob("*.html"))), None)
    if method is not None: pages.append(method)
    out = {"pages": []}
    with Browser() as b:
        out["isolation"] = b.isolation
        out["user_agent"] = b.call("Browser.getVersion").get("product", "")
        for p in pages:
            info = inspect_page(b, p)
            png = b.screenshot()
            info["blank_fraction"] = round(blank_fraction(png), 4)
            if shots is not None:
                shots.mkdir(parents=True, exist_ok=True)
                name = p.relative_to(site).as_posix().replace("/", "_").removesuffix(".html") + ".png"
                (shots / name).write_bytes(png); info["screenshot"] = str(shots / name)
            out["pages"].append(info)
    return out


class _Links(HTMLParser):
    def __init__(self):
        super().__init__(); self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"): self.ids.add(a["id"])
        if tag == "a" and a.get("name"): self.ids.add(a["name"])
        for key in ("href", "src"):
            if a.get(key) and tag in ("a", "img", "link", "script"): self.links.append((tag, a[key]))


def broken_links(site: Path) -> list[str]:
    "Every internal link, image, stylesheet and script of every page whose target file (or anchor) is missing."
    site = Path(site).resolve()
    parsed = {}
    def page(p: Path) -> _Links:
        if p not in parsed:
            parser = _Links(); parser.feed(p.read_text(encoding="utf-8", errors="replace")); parsed[p] = parser
        return parsed[p]
    broken = []
    for html in sorted(site.rglob("*.html")):
        if "_static" in html.relative_to(site).parts: continue
        for tag, link in page(html).links:
            u = urlsplit(link)
            if u.scheme or u.netloc or link.startswith(("mailto:", "javascript:", "data:")): continue
            target = html if not u.path else (html.parent / unquote(u.path)).resolve()
            if u.path.endswith("/") or (target.is_dir()): target = target / "index.html"
            if not target.exists():
                broken.append(f"{html.relative_to(site)}: {tag} {link} -> missing {target}"); continue
            if u.fragment and target.suffix == ".html" and unquote(u.fragment) not in page(target).ids:
                broken.append(f"{html.relative_to(site)}: {tag} {link} -> no anchor #{u.fragment}")
    return broken


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="docs/browser.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("site", nargs="?", default=str(Path(__file__).parent / "_build" / "html"))
    ap.add_argument("--shots", default=str(Path(__file__).parent / "_build" / "screenshots"))
    a = ap.parse_args(argv)
    info = check_site(Path(a.site), Path(a.shots))
    info["broken_links"] = broken_links(Path(a.site))
    for p in info["pages"]:
        bad = [i["src"] for i in p["images"] if not i["ok"]]
        print(f"{Path(p['page']).relative_to(Path(a.site).resolve()) if Path(p['page']).is_absolute() else p['page']}: "
              f"title {p['title']!r}, {len(p['images'])} images ({len(bad)} not loaded), math {p['math']}, "
              f"blank {p['blank_fraction']:.3f}, screenshot {p.get('screenshot')}")
    print(f"isolation: {info['isolation']}; {info['user_agent']}; broken links: {len(info['broken_links'])}")
    for l in info["broken_links"][:50]: print("  " + l)
    return 1 if info["broken_links"] or any(not i["ok"] for p in info["pages"] for i in p["images"]) else 0


if __name__ == "__main__":
    sys.exit(main())
