"""Run ``bentoml serve`` as a child process on a free 127.0.0.1 port (tests, benchmarks, local checks).

The server runs in its own process group, so :meth:`LocalServer.stop` ends it and every worker it spawned, and
nothing outlives the ``with`` block::

    with LocalServer(env={"M6REC_BUNDLE": "models/bundle"}) as server:
        httpx.post(f"{server.url}/recommend", json={...})

``service`` may also be a built bento's tag (``m6rec:<version>``). Ready means BentoML's ``GET /readyz`` answers 200.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

SERVICE = "m6rec.serving.service:M6RecService"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalServer:
    """``bentoml serve SERVICE`` with extra environment ``env`` in folder ``cwd``; start/stop/restart."""

    def __init__(self, env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                 service: str = SERVICE, host: str = "127.0.0.1", startup_timeout: float = 180.0,
                 log_path: str | Path | None = None, nice: int = 0) -> None:
        self.env = {**os.environ, **(env or {})}
        self.cwd = Path(cwd) if cwd else Path.cwd()
        self.service = service
        self.host = host
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="m6rec-serve-", suffix=".log")[1])
        self.nice = nice
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.startup_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self) -> LocalServer:
        if self.proc is not None:
            raise RuntimeError("server already running")
        self.port = free_port(self.host)
        bentoml = Path(sys.executable).with_name("bentoml")
        cmd = [str(bentoml), "serve", self.service, "--host", self.host, "--port", str(self.port)]
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]
        t0 = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = t0 + self.startup_timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"bentoml serve exited with {code} during start-up:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        self.startup_s = time.perf_counter() - t0
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"server not ready after {self.startup_timeout:.0f} s:\n{self.log_tail()}")

    def processes(self) -> list:
        """The server process and every process it spawned (BentoML workers run in their own sessions)."""
        import psutil

        if self.proc is None:
            return []
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the server and its workers."""
        import psutil

        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return total

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the server (it stops its workers), SIGKILL whatever of it is left after ``timeout`` seconds."""
        import psutil

        if self.proc is None:
            return
        procs = self.processes()  # remembered now: workers are not in the server's process group
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # start_new_session: the group id is the child's pid
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        if self.proc.poll() is None:
            self.proc.wait(timeout=timeout)
        self.proc = None

    def restart(self) -> LocalServer:
        self.stop()
        return self.start()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
