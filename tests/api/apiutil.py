"""Helpers for the API tests: settings for small test heaps and a real `pmstore serve` process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx

from service.settings import Settings

PMSTORE_BIN = str(Path(sys.executable).with_name("pmstore"))
MAX_OBJECT_SIZE = 4 << 20       # above objects.OFFLOAD_SIZE, so the worker-thread path is tested
TOKEN = "t0ken-for-the-api-tests"


def small_settings(heap_path, **kw) -> Settings:
    """A small heap that grows, room for the largest test objects."""
    return Settings(heap_path=heap_path, heap_initial_size="4MiB", heap_max_size="256MiB",
                    max_object_size=MAX_OBJECT_SIZE, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`pmstore serve` on 127.0.0.1 and a free port, as a child process."""

    def __init__(self, heap_path, *args: str, env: dict | None = None):
        self.heap_path = Path(heap_path)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [PMSTORE_BIN, "serve", "--heap", str(heap_path), "--port", str(self.port),
                     "--initial-size", "4MiB", "--max-size", "256MiB", "--max-object-size", str(MAX_OBJECT_SIZE),
                     "--log-level", "warning", *args]
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PMSTORE_")} | (env or {})
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True, timeout_s: float = 30.0) -> Server:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.stderr()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout_s} s")

    def stderr(self) -> str:
        return self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM and wait: uvicorn's graceful shutdown closes the store."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
