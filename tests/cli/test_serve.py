"""`m6rec serve` starts the real BentoML service on 127.0.0.1 and answers what the Python API answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

import m6rec
from m6rec.api import rows
from m6rec.serving.bundle_io import load_bundle
from m6rec.serving.local_server import free_port
from tests.cli.conftest import DOMAIN
from tests.data_fixtures import REPO

STARTUP_LIMIT_S = 180.0  # the bound start-up must finish within on a loaded 2-core machine, not a measurement


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_serve_binds_localhost_and_answers_like_the_api(small_bundle: Path, tmp_path: Path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]),
               BENTOML_HOME=str(tmp_path / "bentoml"))
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "m6rec", "serve", "--model", str(small_bundle), "--port",
                             str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_LIMIT_S
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text(errors="replace")[-4000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, "m6rec serve not ready in time"
            time.sleep(0.5)
        listening = {c.laddr for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                     for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        assert ("127.0.0.1", port) in {(a.ip, a.port) for a in listening}  # localhost, not every interface
        user = load_bundle(small_bundle).domains[DOMAIN].raw_user[2]
        answer = _post(f"http://127.0.0.1:{port}/recommend", {"domain": DOMAIN, "user": user, "k": 5})
        got = rows(answer)
        want = m6rec.load(small_bundle).recommend(DOMAIN, user, k=5)
        assert [r["item"] for r in got] == [r["item"] for r in want]
    finally:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)] \
            if proc.poll() is None else []
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            p.kill()
        log.close()
