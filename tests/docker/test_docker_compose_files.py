"""docker/compose.yaml validates with compose v1 (Debian's docker-compose 1.29) and, where one
is installed, compose v2, for the default services and the `cluster` profile."""

from __future__ import annotations

import os
import shutil

import pytest
from dockerutil import COMPOSE_FILE, run


def _v2() -> list[str] | None:
    """A compose v2: $PMSTORE_COMPOSE_V2 (a binary), or the docker CLI plugin."""
    if os.environ.get("PMSTORE_COMPOSE_V2"):
        return os.environ["PMSTORE_COMPOSE_V2"].split()
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"], check=False).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.mark.parametrize("profile", [[], ["--profile", "cluster"]], ids=["default", "cluster"])
def test_compose_file_validates(docker_env, profile):
    v1 = shutil.which("docker-compose")
    assert v1, "docker-compose (v1) missing"
    for compose in (c for c in ([v1], _v2()) if c):
        p = run([*compose, "-f", str(COMPOSE_FILE), *profile, "config", "-q"], check=False)
        assert p.returncode == 0, f"{compose} config -q: {p.stdout}{p.stderr}"
        p = run([*compose, "-f", str(COMPOSE_FILE), *profile, "config", "--services"])
        services = set(p.stdout.split())        # v1 lists every service whatever the profile
        assert services >= ({"pmstore", "shard1", "shard2", "shard3", "nginx"} if profile else {"pmstore"})
