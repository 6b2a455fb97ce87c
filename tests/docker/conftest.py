"""The docker tier: a real Docker engine, the images built once per session, compose stacks.

`docker_env` (session) uses an engine that already answers, or sets one up through
tools/docker-engine.sh (install, start, base: needs root and apt); where none can be had the
tests skip with the reason. PMSTORE_DOCKER_TESTS=require (set by .ci/run) turns that skip
into a failure; PMSTORE_DOCKER_TESTS=0 skips the tier. It builds the pmstore and nginx images
once (compose build, tags unique to the session) and at the end removes what it made: the
images and build layers, the base image if it imported it, and the engine if it started it.
Measurements (build time, image sizes, up -> healthy) are printed in the terminal summary.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field

import pytest
from dockerutil import ENGINE_SCRIPT, NOTES, REPO, CommandError, docker_cli, note, run

BASE_IMAGE = "local/debian:bookworm"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def pytest_terminal_summary(terminalreporter):
    if NOTES:
        terminalreporter.write_sep("-", "docker")
        for line in NOTES:
            terminalreporter.write_line(line)


@dataclass
class DockerEnv:
    docker: str
    compose: list[str]
    session: str
    image: str
    nginx_image: str
    env: dict = field(default_factory=dict)     # what every Stack gets (images, base)

    def stack_env(self, **kw: str) -> dict:
        return {**self.env, **kw}


def _answers(docker: str | None) -> bool:
    return bool(docker) and run([docker, "info"], check=False, timeout_s=30).returncode == 0


def _unavailable(reason: str):
    if os.environ.get("PMSTORE_DOCKER_TESTS") == "require":
        pytest.fail(f"PMSTORE_DOCKER_TESTS=require but no Docker engine: {reason}", pytrace=False)
    pytest.skip(f"no Docker engine: {reason}")


def _engine(cmd: str, timeout_s: float) -> str:
    return run(["bash", str(ENGINE_SCRIPT), cmd], timeout_s=timeout_s).stdout.strip()


def _image_size_mb(docker: str, image: str) -> float:
    return int(run([docker, "image", "inspect", "-f", "{{.Size}}", image]).stdout) / 1e6


@pytest.fixture(scope="session")
def docker_env():
    if os.environ.get("PMSTORE_DOCKER_TESTS") == "0":
        pytest.skip("PMSTORE_DOCKER_TESTS=0")
    t_start = time.monotonic()
    started_engine = imported_base = False
    docker = docker_cli()
    if not _answers(docker):
        if os.geteuid() != 0:
            _unavailable("no engine answers and not root (tools/docker-engine.sh needs root to set one up)")
        if not shutil.which("apt-get") and not shutil.which("dockerd"):
            _unavailable("no engine answers, no dockerd and no apt-get to install one")
        try:
            _engine("install", 600)
        except CommandError as e:
            _unavailable(f"installing docker.io docker-compose debootstrap failed: {e}")
        try:
            started_engine = _engine("start", 60) == "started"
        except CommandError as e:
            _unavailable(f"dockerd does not start here: {e}")
        docker = docker_cli()
    compose = [c for c in (shutil.which("docker-compose"),) if c]
    if os.environ.get("PMSTORE_COMPOSE"):           # e.g. a compose v2 binary
        compose = os.environ["PMSTORE_COMPOSE"].split()
    if not compose:
        _unavailable("an engine answers but there is no docker-compose (tools/docker-engine.sh install)")
    note(f"engine {'started by the tests' if started_engine else 'already running'} "
         f"({time.monotonic() - t_start:.1f} s)")

    session = f"t{os.getpid()}"
    de = DockerEnv(docker, compose, session, image=f"local/pmstore:test-{session}",
                   nginx_image=f"local/pmstore-nginx:test-{session}")
    ca_copy = REPO / "host-ca-bundle.crt"
    made_ca = False
    try:
        if run([docker, "image", "inspect", BASE_IMAGE], check=False).returncode != 0:
            t0 = time.monotonic()
            _engine("base", 600)
            imported_base = True
            note(f"base image {BASE_IMAGE}: debootstrap + import {time.monotonic() - t0:.1f} s, "
                 f"{_image_size_mb(docker, BASE_IMAGE):.0f} MB")
        if not ca_copy.exists() and os.path.exists(CA_BUNDLE):
            shutil.copyfile(CA_BUNDLE, ca_copy)      # pip in the build trusts the host's egress CA
            made_ca = True
        de.env = {"BASE_IMAGE": BASE_IMAGE, "PMSTORE_IMAGE": de.image, "PMSTORE_NGINX_IMAGE": de.nginx_image}
        t0 = time.monotonic()
        v1 = run([*compose, "version", "--short"]).stdout.strip().startswith("1.")
        run([*compose, "-f", str(REPO / "docker" / "compose.yaml"), "-p", f"pmstore-{session}-build",
             "--profile", "cluster", "build", *(["--parallel"] if v1 else []), "pmstore", "nginx"],
            env={**os.environ, **de.env}, timeout_s=900)
        note(f"images built in {time.monotonic() - t0:.1f} s: {de.image} "
             f"{_image_size_mb(docker, de.image):.0f} MB, {de.nginx_image} "
             f"{_image_size_mb(docker, de.nginx_image):.0f} MB")
        yield de
    finally:
        if made_ca:
            ca_copy.unlink(missing_ok=True)
        t0 = time.monotonic()
        if started_engine:
            _engine("stop", 120)                     # images, volumes and state go with it
        else:
            run([docker, "rmi", "-f", de.image, de.nginx_image], check=False)
            run([docker, "image", "prune", "-f", "--filter", "label=org.pmstore.stage=build"], check=False)
            if imported_base:
                run([docker, "rmi", BASE_IMAGE], check=False)
        note(f"teardown {time.monotonic() - t0:.1f} s; docker tier {time.monotonic() - t_start:.1f} s in all")
