"""The `pmstore` command line: `heap create|info`, `store info`, `check [--repair]`, `crashtest`; the server and
client commands live in service/cli_remote.py."""

from __future__ import annotations

import inspect
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
                     "recovery_ms": round(st.report["replay_ms"] + st.report["scan_ms"] + st.report["index_ms"], 3),
                     "store_upgraded_from": st.report["index_upgraded_from"]}   # this open raised it (FORMAT.md 9)
        _print_state(state, json_out, "store")
    except (PmstoreError, OSError, ValueError) as e:
        _fail(str(e))


@app.command("check")
def check(path: Path, json_out: bool = typer.Option(False, "--json", help="print findings as JSON"),
          crashed: bool = typer.Option(False, "--crashed", help="accept what a crash leaves (sealed lanes, "
                                       "one stale header copy) instead of requiring a heap at rest"),
          repair: bool = typer.Option(False, "--repair", help="fix what can be fixed without losing acknowledged "
                                      "data (invalid entries go to PATH.quarantine/), then check again"),
          no_values: bool = typer.Option(False, "--no-values", help="skip the value checksums (I4)")):
    """Check a heap file with the independent checker. Exit 0 clean, 1 findings, 2 unreadable.

    Reads only, unless --repair: then normal recovery runs first (header copy, redo lanes),
    broken index entries are quarantined, the index relinked and leaked blocks freed;
    every action is reported and the exit status describes the repaired file."""
    from recovery.check import check_heap, format_report
    actions = None
    try:
        if repair:
            from recovery.repair import UnrepairableError
            from recovery.repair import repair as do_repair
            try:
                rr = do_repair(path)
            except UnrepairableError as e:
                _fail(f"{path}: cannot repair: {e}")
            except PmstoreError as e:
                _fail(f"{path}: {e}")
            actions = {"actions": rr.actions, "quarantined": rr.quarantined, "quarantine_dir": rr.quarantine_dir,
                       "findings_before": len(rr.before)}
        rep = check_heap(path, at_rest=not crashed or repair, verify_values=not no_values)
    except OSError as e:
        _fail(f"{path}: {e.strerror or e}")
    if json_out:
        out = {"path": str(path), "findings": [
            {"invariant": f.invariant, "off": f.off, "message": f.message} for f in rep.findings],
            "blocks": len(rep.blocks), "runs": rep.runs, "spans": rep.spans, "objects": rep.objects,
            "value_bytes": rep.value_bytes, "file_size": rep.file_size}
        print(json.dumps({**out, "repair": actions} if actions is not None else out))
    else:
        if actions is not None:
            for line in actions["actions"] or ["nothing to repair"]:
                print(f"repair: {line}")
        print(format_report(rep))
    if rep.header is None and rep.findings:
        raise typer.Exit(2)
    raise typer.Exit(1 if rep.findings else 0)


@app.command("crashtest")
def crashtest(quick: bool = typer.Option(False, "--quick", help="a few workloads (seconds)"),
              long: bool = typer.Option(False, "--long", help="many more workloads and subsets (minutes)"),
              json_out: bool = typer.Option(False, "--json", help="print the totals as one JSON object"),
              mutants: bool = typer.Option(True, "--mutants/--no-mutants",
                                           help="also build each mutant C core and expect the quick plan to catch it"),
              workers: int = typer.Option(0, help="explorer processes (0: one per CPU, at most 4)"),
              replay: str = typer.Option("", "--replay", metavar="SPEC",
                                         help="rerun one workload alone, as a failure printed it: "
                                              "'store seed=37 ops=20 subsets=48 threads=3' (no mutants)")):
    """Crash-injection suite: every crash state of randomized store and redo workloads is
    recovered and checked against a model and the independent checker. Exit 1 on any
    violation or uncaught mutant; each violating workload is printed as a --replay spec."""
    from rich.progress import Progress

    from recovery import crashtest as ct
    from recovery import mutants as mt
    if quick + long + bool(replay) > 1:
        _fail("--quick, --long and --replay exclude each other")
    plan: ct.Plan | list[ct.Job]
    if replay:
        try:
            plan, plan_name, mutants = [ct.Job.parse(replay)], "replay", False
        except ValueError as e:
            _fail(f"--replay: {e}")
    else:
        plan_name = "quick" if quick else "long" if long else "default"
        plan = ct.PLANS[plan_name]
    t0 = time.perf_counter()
    err = Console(stderr=True)
    with Progress(console=err, transient=True, disable=json_out and not err.is_terminal) as bar:
        task = bar.add_task(f"crash states ({plan_name})", total=None)

        def step(i, n, res):
            bar.update(task, completed=i + 1, total=n, description=f"crash states ({plan_name}): {res.states} more")
        tot = ct.run(plan, workers=workers or None, progress=step)
        results = []
        if mutants and mt.compiler_available():
            mtask = bar.add_task("mutants", total=len(mt.MUTANTS))
            results = mt.run_all(progress=lambda r: bar.advance(mtask))
    caught = sum(r.caught for r in results)
    out = {"plan": plan_name, "workloads": tot.workloads, "crash_states": tot.crash_states,
           "persist_points": tot.persist_points, "violations": len(tot.violations),
           "workers": workers or ct.default_workers(), "replay": [job.spec() for job in tot.failed],
           "mutants": len(results), "mutants_caught": caught,
           "mutant_results": {r.name: {"caught": r.caught, "violations": r.violations, "crash_states": r.crash_states,
                                       "breaks": r.description, "error": r.error} for r in results},
           "seconds": round(time.perf_counter() - t0, 1)}
    if mutants and not results:
        out["mutants_skipped"] = "no C compiler: mutants need to build the C core"
    if json_out:
        print(json.dumps(out))
    else:
        console.print(f"{out['crash_states']} crash states at {out['persist_points']} persist points "
                      f"({out['workloads']} workloads): {out['violations']} violations")
        for v in tot.violations[:5]:
            console.print(f"  [red]violation[/red] {escape(str(v))}")
        for job in tot.failed:
            console.print(f"  rerun alone: pmstore crashtest --replay '{escape(job.spec())}' --workers {out['workers']}")
        for r in results:
            mark = "[green]caught[/green]" if r.caught else "[red]NOT caught[/red]"
            console.print(f"mutant {r.name}: {mark} ({r.violations} violations in {r.crash_states} states) "
                          f"-- {escape(r.description)}")
        if results:
            console.print(f"{caught}/{len(results)} mutants caught")
        console.print(f"{out['seconds']} s")
    raise typer.Exit(1 if tot.violations or caught < len(results) else 0)


from service import cli_remote

cli_remote.register(app)


def _flow_help(t: typer.Typer) -> None:
    """Join the lines of each paragraph of every command's docstring: they wrap at the
    source's width, and --help keeps a docstring's line breaks (then wraps again at the
    terminal's, leaving ragged lines)."""
    for cmd in t.registered_commands:
        text = inspect.cleandoc(cmd.help or (cmd.callback.__doc__ if cmd.callback else None) or "")
        cmd.help = "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))
    for group in t.registered_groups:
        _flow_help(group.typer_instance)


_flow_help(app)


def main() -> None:  # pragma: no cover
    sys.exit(app())
