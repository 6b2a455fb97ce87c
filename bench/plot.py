"""Plot a bench's JSON: throughput vs threads, one line per system and backend, one panel per workload.

Reads the one JSON object a bench prints with --json ({"bench", "env", "results"}),
from a file or stdin, and writes a PNG. Needs matplotlib, which is not a project
dependency: `.venv/bin/pip install matplotlib`.

    .venv/bin/python bench/alloc.py --quick --json > alloc.json
    .venv/bin/python bench/plot.py alloc.json -o alloc.png
    .venv/bin/python bench/alloc.py --quick --json | .venv/bin/python bench/plot.py - -o alloc.png
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections import defaultdict
from pathlib import Path


def load(source: str) -> dict:
    """The bench object from a path or '-' (stdin); a clear error if it is not one."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"plot.py: {source}: not JSON ({e}); run the bench with --json") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), list):
        raise SystemExit(f'plot.py: {source}: expected {{"bench", "results": [...]}} from a bench\'s --json')
    return data


def series_label(row: dict, varying: list[str]) -> str:
    """system/backend, plus any other key (like `path` or `objects`) that splits otherwise equal rows."""
    parts = [str(row.get("system", "?"))]
    if row.get("backend") not in (None, "", "volatile"):
        parts.append(str(row["backend"]))
    parts += [f"{k}={row[k]}" for k in varying if k in row]
    return "/".join(parts[:2]) + "".join(f" ({p})" for p in parts[2:])


def group(results: list[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{workload: {label: [(threads, ops_per_s), ...]}} over the rows that have both."""
    rows = [r for r in results if isinstance(r.get("threads"), int) and isinstance(r.get("ops_per_s"), (int, float))]
    # keys that take several values among rows of one workload/system/backend/threads
    by_point = defaultdict(list)
    for r in rows:
        by_point[(r.get("workload"), r.get("system"), r.get("backend"), r["threads"])].append(r)
    varying = sorted({k for same in by_point.values() if len(same) > 1
                      for k in ("path", "entries_per_commit", "objects")
                      if len({str(r.get(k)) for r in same}) > 1})
    out: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        out[str(r.get("workload", "-"))][series_label(r, varying)].append((r["threads"], float(r["ops_per_s"])))
    return out


def plot(data: dict, out_path: Path, linear: bool) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plot.py needs matplotlib, which the project does not install: "
                         ".venv/bin/pip install matplotlib") from None
    groups = group(data["results"])
    if not groups:
        raise SystemExit("plot.py: no rows with `threads` and `ops_per_s` to plot")
    workloads = sorted(groups)
    ncols = min(3, len(workloads))
    nrows = -(-len(workloads) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.4 * nrows), squeeze=False)
    # colour by system, line style by backend: a system's backends read as one family
    labels = sorted({label for wl in groups.values() for label in wl})
    systems = sorted({label.split("/")[0].split(" ")[0] for label in labels})
    cmap = plt.get_cmap("tab10")
    colors = {system: cmap(i % 10) for i, system in enumerate(systems)}
    styles = {"msync": ("--", "s"), "none": (":", "^")}
    for ax, wl in zip(axes.flat, workloads):
        for label in sorted(groups[wl]):
            pts = sorted(groups[wl][label])
            system = label.split("/")[0].split(" ")[0]
            backend = label.split("/")[1].split(" ")[0] if "/" in label else ""
            style, marker = styles.get(backend, ("-", "o"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=style, marker=marker, label=label,
                    color=colors[system])
        threads = sorted({p[0] for s in groups[wl].values() for p in s})
        ax.set_xticks(threads)
        ax.set_xlabel("threads")
        ax.set_ylabel("ops/s (all threads)")
        if not linear:
            ax.set_yscale("log")
        ax.set_title(wl)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(workloads):]:
        ax.axis("off")
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(4, len(handles)),
               fontsize="small", frameon=False)
    env = data.get("env") or {}
    note = ", ".join(f"{k}={env[k]}" for k in ("cpu", "cpu_count", "flush_kind", "duration_s", "runs") if k in env)
    # the machine on lines of their own, wrapped to the figure: one panel is narrow
    wrapped = textwrap.wrap(note, width=int(11 * 5.2 * ncols))
    fig.suptitle("\n".join([f"bench: {data.get('bench', '?')}", *wrapped]), fontsize="medium")
    legend_rows = -(-len(handles) // 4)
    fig.tight_layout(rect=(0, 0.03 + 0.035 * legend_rows, 1, 1))    # it makes room for the title
    fig.savefig(out_path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", nargs="?", default="-", help="the bench's --json output (a file, or - for stdin)")
    p.add_argument("-o", "--out", type=Path, default=None,
                   help="PNG to write (default: <input>.png, or <bench>.png when reading stdin)")
    p.add_argument("--linear", action="store_true", help="linear y axis (default log: systems differ 1000x)")
    args = p.parse_args(argv)
    data = load(args.input)
    out = args.out or (Path(args.input).with_suffix(".png") if args.input != "-"
                       else Path(f"{data.get('bench', 'bench')}.png"))
    plot(data, out, args.linear)
    print(f"plot.py: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
