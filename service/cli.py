"""The `pmstore` command line: `heap create|info`, `store info`, `check`. Subcommands grow with the issues."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from allocator import Heap, PmstoreError, layout
from allocator.heapfile import lock_holder_pid, validate_headers
from allocator.sizes import format_size, parse_size

app = typer.Typer(help="pmstore: a crash-consistent persistent-memory object store.", no_args_is_help=True)
heap_app = typer.Typer(help="Create and inspect heap files.", no_args_is_help=True)
app.add_typer(heap_app, name="heap")
store_app = typer.Typer(help="Open object stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")
console = Console()

DEFAULT_SIZE = "64MiB"
DEFAULT_MAX = "16GiB"


def _fail(msg: str, code: int = 2):
    Console(stderr=True).print(f"[red]error:[/red] {escape(msg)}")
    raise typer.Exit(code)


def _sizes(size: str, max_size: str) -> tuple[int, int]:
    try:
        return parse_size(size), parse_size(max_size)
    except ValueError as e:
        _fail(str(e))


def heap_state(path: Path) -> dict:
    """The heap's state from its header copies and lanes, read without opening (no writes)."""
    with open(path, "rb") as f:
        actual = os.fstat(f.fileno()).st_size
        raw_a = os.pread(f.fileno(), layout.HEADER_SIZE, layout.HEADER_A_OFF)
        raw_b = os.pread(f.fileno(), layout.HEADER_SIZE, layout.HEADER_B_OFF)
        h, restored = validate_headers(path, raw_a, raw_b, actual)
        sealed = 0
        for i in range(h.lane_count):
            if os.pread(f.fileno(), 8, h.redo_off + i * h.lane_size) != bytes(8):
                sealed += 1
        root = int.from_bytes(os.pread(f.fileno(), 8, h.root_off), "little")
    return {
        "path": str(path), "uuid": h.uuid.hex(), "format_version": h.format_version,
        "file_size": h.file_size, "max_size": h.max_size, "page_size": h.page_size,
        "lane_count": h.lane_count, "lane_size": h.lane_size, "data_off": h.data_off,
        "generation": h.generation, "clean_shutdown": bool(h.clean_shutdown),
        "lanes_not_empty": sealed, "root": root, "header_copy_stale": restored,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.created_ns / 1e9)),
        "locked_by_pid": lock_holder_pid(path),
    }


def _print_state(state: dict, as_json: bool, kind: str = "heap") -> None:
    if as_json:
        print(json.dumps(state))
        return
    t = Table(show_header=False, title=escape(f"{kind} {state['path']}"))
    for k, v in state.items():
        if k.endswith("size") and isinstance(v, int):
            v = f"{v} ({format_size(v)})"
        t.add_row(k, escape(str(v)))
    console.print(t)


@heap_app.command("create")
def heap_create(path: Path, size: str = typer.Option(DEFAULT_SIZE, help="initial size (bytes or KiB/MiB/GiB)"),
                max_size: str = typer.Option(DEFAULT_MAX, help="largest size the file may grow to"),
                lanes: int = typer.Option(layout.DEFAULT_LANE_COUNT, help="redo lanes (concurrent writers)"),
                json_out: bool = typer.Option(False, "--json", help="print the state as JSON")):
    """Create a new heap file at PATH."""
    s, m = _sizes(size, max_size)
    try:
        Heap.create(path, size=s, max_size=m, lane_count=lanes).close()
        _print_state(heap_state(path), json_out)
    except (PmstoreError, OSError, ValueError) as e:
        _fail(str(e))


@heap_app.command("info")
def heap_info(path: Path, create: bool = typer.Option(False, "--create", help="create the heap if missing"),
              size: str = typer.Option(DEFAULT_SIZE, help="initial size when creating"),
              max_size: str = typer.Option(DEFAULT_MAX, help="maximum size when creating"),
              json_out: bool = typer.Option(False, "--json", help="print the state as JSON")):
    """Print the state of the heap at PATH without modifying it (--create makes it first if missing)."""
    s, m = _sizes(size, max_size)
    try:
        if not path.exists():
            if not create:
                _fail(f"{path}: no such heap (pass --create to make one)")
            path.parent.mkdir(parents=True, exist_ok=True)
            Heap.create(path, size=s, max_size=m).close()
        _print_state(heap_state(path), json_out)
    except (PmstoreError, OSError, ValueError) as e:
        _fail(str(e))


@store_app.command("info")
def store_info(path: Path, create: bool = typer.Option(False, "--create", help="create the store if missing"),
               size: str = typer.Option(DEFAULT_SIZE, help="initial size when creating"),
               max_size: str = typer.Option(DEFAULT_MAX, help="maximum size when creating"),
               json_out: bool = typer.Option(False, "--json", help="print the state as JSON")):
    """Open the store at PATH (recovering it after a crash), print its state, close it cleanly."""
    from store import Store
    s, m = _sizes(size, max_size)
    try:
        if not path.exists() and not create:
            _fail(f"{path}: no such store (pass --create to make one)")
        with Store.open(path, create=create, initial_size=s, max_size=m) as st:
            heap = st.heap.stats()
            state = {"path": str(path), "objects": len(st), "file_size": heap["file_size"],
                     "max_size": heap["max_size"], "bytes_used": heap["bytes_used"],
                     "bytes_free": heap["bytes_free"], "live_blocks": heap["live_blocks"],
                     "was_clean": st.report["was_clean"], "lanes_replayed": st.report["lanes_replayed"],
                     "recovery_ms": round(st.report["replay_ms"] + st.report["scan_ms"] + st.report["index_ms"], 3)}
        _print_state(state, json_out, "store")
    except (PmstoreError, OSError, ValueError) as e:
        _fail(str(e))


@app.command("check")
def check(path: Path, json_out: bool = typer.Option(False, "--json", help="print findings as JSON"),
          crashed: bool = typer.Option(False, "--crashed", help="accept what a crash leaves (sealed lanes, "
                                       "one stale header copy) instead of requiring a heap at rest")):
    """Check a heap file with the independent checker (reads only). Exit 0 clean, 1 findings, 2 unreadable."""
    from recovery.check import check_heap, format_report
    try:
        rep = check_heap(path, at_rest=not crashed)
    except OSError as e:
        _fail(f"{path}: {e.strerror or e}")
    if json_out:
        print(json.dumps({"path": str(path), "findings": [
            {"invariant": f.invariant, "off": f.off, "message": f.message} for f in rep.findings],
            "blocks": len(rep.blocks), "runs": rep.runs, "spans": rep.spans}))
    else:
        print(format_report(rep))
    if rep.header is None and rep.findings:
        raise typer.Exit(2)
    raise typer.Exit(1 if rep.findings else 0)


from service import cli_remote  # noqa: E402  (the commands register onto `app`, defined above)

cli_remote.register(app)


def main() -> None:  # pragma: no cover
    sys.exit(app())
