"""JupyterLab as a person uses it: a server on loopback, a notebook session with the `selfalign` kernel opened
through the REST API, a cell that imports selfalign executed over the kernel's websocket, everything shut down."""
import json
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest
import websocket

from conftest import BIN, ROOT


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _api(base, path, token, method="GET", body=None):
    req = urllib.request.Request(f"{base}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        data = r.read()
        return json.loads(data) if data else None


def test_make_lab_starts_jupyterlab_with_the_selfalign_kernel():
    mk = (ROOT / "Makefile").read_text()
    recipe = mk.split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "jupyter lab" in recipe and "--ip=127.0.0.1" in recipe


@pytest.fixture
def server(tmp_path):
    port, token = _free_port(), uuid.uuid4().hex
    (tmp_path / "demo.ipynb").write_text(json.dumps({"cells": [], "metadata": {"kernelspec": {"name": "selfalign", "display_name": "Python (selfalign)", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}))
    p = subprocess.Popen([str(BIN / "jupyter"), "lab", "--ip=127.0.0.1", f"--port={port}", "--no-browser", "--allow-root",
                          f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try: _api(base, "/api/status", token); break
            except OSError:
                if p.poll() is not None: pytest.fail(f"jupyter lab exited: {p.stderr.read().decode()[-2000:]}")
                time.sleep(0.5)
        else: pytest.fail("jupyter lab did not answer within 60 s")
        yield base, token
    finally:
        p.terminate()
        try: p.wait(timeout=20)
        except subprocess.TimeoutExpired: p.kill(); p.wait()


def test_a_notebook_runs_selfalign_in_the_selfalign_kernel(server):
    base, token = server
    assert "selfalign" in _api(base, "/api/kernelspecs", token)["kernelspecs"]
    with urllib.request.urlopen(urllib.request.Request(f"{base}/lab?token={token}"), timeout=30) as r:
        assert r.status == 200 and "JupyterLab" in r.read().decode()  # the Lab page itself is served
    session = _api(base, "/api/sessions", token, "POST", {"path": "demo.ipynb", "type": "notebook", "name": "demo.ipynb",
                                                          "kernel": {"name": "selfalign"}})
    kid = session["kernel"]["id"]
    try:
        ws = websocket.create_connection(f"ws://127.0.0.1:{base.rsplit(':', 1)[1]}/api/kernels/{kid}/channels?token={token}", timeout=60)
        msg_id = uuid.uuid4().hex
        code = "import sys, selfalign, selfalign.objectives.losses\nprint(selfalign.__name__, sys.executable)"
        ws.send(json.dumps({"header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                                       "version": "5.3"}, "parent_header": {}, "metadata": {}, "channel": "shell",
                            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                                        "allow_stdin": False, "stop_on_error": True}}))
        out, status = "", None
        deadline = time.time() + 120
        while time.time() < deadline and status is None:
            m = json.loads(ws.recv())
            if m.get("parent_header", {}).get("msg_id") != msg_id: continue
            if m["msg_type"] == "stream": out += m["content"]["text"]
            if m["msg_type"] == "error": pytest.fail(f"{m['content']['ename']}: {m['content']['evalue']}")
            if m["msg_type"] == "execute_reply": status = m["content"]["status"]
        ws.close()
        assert status == "ok"
        name, exe = out.split()
        assert name == "selfalign" and exe.startswith(str(BIN.parent))  # the project's environment
    finally:
        _api(base, f"/api/sessions/{session['id']}", token, "DELETE")
    assert _api(base, "/api/kernels", token) == []  # the kernel was shut down with its session
