"""`pmstore serve` and the HTTP client commands (put/get/ls/rm/stat). Filled in by the REST service issue."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the server and client commands to the root `pmstore` app."""
