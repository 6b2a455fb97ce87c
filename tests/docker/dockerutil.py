"""Helpers for the docker tier: run docker/compose commands, pick free ports, wait for health.

A `Stack` is one compose project over docker/compose.yaml with its own name and PMSTORE_*
environment (ports picked free: the services use host networking).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
ENGINE_SCRIPT = REPO / "tools" / "docker-engine.sh"


NOTES: list[str] = []     # measurements, printed in the terminal summary (conftest.py)


def note(line: str) -> None:
    """Record a line for the terminal summary (also printed, for -s runs)."""
    NOTES.append(line)
    print(f"[docker] {line}")


class CommandError(AssertionError):
    pass


def run(cmd: list[str], *, env: dict | None = None, timeout_s: float = 120, check: bool = True,
        input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run cmd, capturing output; on a non-zero exit (check) raise with the output's tail."""
    p = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout_s, input=input_text)
    if check and p.returncode != 0:
        tail = (p.stdout + p.stderr)[-3000:]
        raise CommandError(f"{' '.join(cmd)} exited {p.returncode}:\n{tail}")
    return p


def docker_cli() -> str | None:
    return shutil.which("docker") or (("/usr/bin/docker") if os.path.exists("/usr/bin/docker") else None)


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 now, picked below the kernel's ephemeral range, so that
    no other test's bind(0) or outgoing connection takes one before our server binds it (host
    networking: the services bind these on the host)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    lo, hi = (20000, low) if low > 21000 else (low, 65535)
    rnd, ports = random.Random(), []
    while len(ports) < n:
        port = rnd.randrange(lo, hi)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


class Stack:
    """One compose project: `compose(...)` runs docker-compose -f docker/compose.yaml -p NAME."""

    def __init__(self, compose: list[str], docker: str, project: str, env: dict, profiles: tuple[str, ...] = ()):
        self.compose_cmd, self.docker, self.project = compose, docker, project
        self.env = {**os.environ, **env}
        self.profiles = profiles
        self.started = False

    def compose(self, *args: str, timeout_s: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        prof = [a for p in self.profiles for a in ("--profile", p)]
        return run([*self.compose_cmd, "-f", str(COMPOSE_FILE), "-p", self.project, *prof, *args],
                   env=self.env, timeout_s=timeout_s, check=check)

    def container(self, service: str) -> str:
        """The service's container id, running or not (`compose ps -q` lists stopped ones in v1 only)."""
        cid = run([self.docker, "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                   "--filter", f"label=com.docker.compose.service={service}",
                   "--filter", "label=com.docker.compose.oneoff=False"]).stdout.strip()
        assert cid, f"no container for {service} in {self.project}"
        return cid.splitlines()[0]

    def inspect(self, service: str) -> dict:
        return json.loads(run([self.docker, "inspect", self.container(service)]).stdout)[0]

    def health(self, service: str) -> str:
        st = self.inspect(service)["State"]
        return st.get("Health", {}).get("Status", st["Status"])

    def wait_healthy(self, *services: str, timeout_s: float = 90) -> float:
        """Seconds until every service's healthcheck says healthy (fails on timeout)."""
        t0 = time.monotonic()
        pending = list(services)
        while pending:
            pending = [s for s in pending if self.health(s) != "healthy"]
            if not pending:
                break
            if time.monotonic() - t0 > timeout_s:
                logs = self.compose("logs", "--tail", "30", *services, check=False).stdout
                raise AssertionError(f"{pending} not healthy after {timeout_s} s:\n{logs[-3000:]}")
            time.sleep(0.2)
        return time.monotonic() - t0

    def pmstore(self, service: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`pmstore ARGS` in a one-off container of service (its volume; the server must be stopped
        for commands that open the heap)."""
        return self.compose("run", "--rm", "--no-deps", "-T", service, "pmstore", *args, check=check)

    def heap_info(self, service: str) -> dict:
        return json.loads(self.pmstore(service, "heap", "info", "--json", "/data/pmstore.heap").stdout)

    def down(self, *extra: str) -> None:
        self.compose("down", "-v", "--remove-orphans", *extra, timeout_s=120, check=False)
