"""Object store throughput: pmstore vs py-lmdb vs sqlite3 vs a Python dict, in one run.

Systems (one write transaction per put or delete; every thread shares one store):
  pmstore        Store, durability="sync": backend flush (CLWB+SFENCE) on /dev/shm,
                 msync on a file under /tmp.
  pmstore-os     Store, durability="os" (backend none): page cache only.
  lmdb           py-lmdb, default sync, one write txn per put/delete, one read txn per get.
  lmdb-writemap  the same with writemap=True (+ sync).
  sqlite         sqlite3, WAL, synchronous=FULL, autocommit (one transaction per statement),
                 table kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID; one connection per thread.
  dict           a Python dict: the volatile ceiling (list: a sorted key list + bisect).
Workloads per value size (100 B, 4 KiB, 64 KiB) and path (/dev/shm, a file under /tmp):
put (fresh keys; 1 and N threads), get (random fixture keys: the value alone, as
LMDB's txn.get returns it; pmstore's Store.get_value), get-info (pmstore only: Store.get,
the value and its ObjectInfo), list (pages of 1000 by
prefix over the fixture; ops = objects listed), delete (the keys the 1-thread put made,
in random order). Reopen: time to open a store of 10k/100k(/1M) objects of 100 B after a
clean close, and for pmstore after a simulated crash (Store.abandon). Replace (with
--replace-objects): durable replaces of random keys in a large store on a file under /tmp,
one thread, with the latency tail. Scratch files are removed afterwards.

    .venv/bin/python bench/store.py --quick --json
"""

from __future__ import annotations

import abc
import bisect
import contextlib
import gc
import os
import random
import sys
import time
from itertools import cycle, islice
from pathlib import Path

import common

from allocator import _native


def _import_store_class():
    """The `store` package, not this file: running bench/store.py puts bench/ first on
    sys.path, where `import store` would find this script again."""
    here = os.path.dirname(os.path.abspath(__file__))
    saved, shadow = sys.path[:], sys.modules.pop("store", None)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        from store.store import Store
    finally:
        sys.path[:] = saved
        if shadow is not None and "store" not in sys.modules:
            sys.modules["store"] = shadow
    return Store


Store = _import_store_class()

try:
    import lmdb
except ImportError:     # optional: the bench skips the LMDB systems and says so
    lmdb = None
try:
    import sqlite3
except ImportError:     # a Python built without _sqlite3
    sqlite3 = None

SYSTEMS = ["pmstore", "pmstore-os", "lmdb", "lmdb-writemap", "sqlite", "dict"]
PATH_KINDS = ["dev-shm", "tmp-file"]
VALUE_SIZES = [100, 4096, 65536]
FIXTURE_COUNT = {100: 5000, 4096: 5000, 65536: 1000}   # keys under "f/" for get and list
PAGE_SIZE = 1000
OPS_CAP = 200_000               # put ops per phase, all threads together (dict would run away)
BYTE_CAP = 128 << 20            # value bytes per put phase: fewer ops for big values
DELETE_TIME_FACTOR = 4          # delete runs until its keys are gone or 4 phase durations pass
LMDB_MAP_SIZE = 16 << 30        # sparse; writemap truncates the file to it
REOPEN_VALUE_SIZE = 100
REOPEN_PATH_KIND = "dev-shm"
SPACE_OBJECTS = 100_000
PHASES_PER_RUN = 4              # put, get, list, delete share one run's --duration-s
TABLE_COLUMNS = ["system", "backend", "path_kind", "workload", "value_size", "threads", "objects", "ops_per_s",
                 "us_per_op", "persists_per_op", "vs_lmdb_sync", "reopen_ms", "space_ratio", "median_of"]
INSTALL_HINT = {"lmdb": ".venv/bin/pip install lmdb"}


# ---------------------------------------------------------------- keys
_suffixes: list[str] = []


def make_keys(prefix: str, count: int, as_bytes: bool) -> list:
    """count distinct keys prefix + 8 digits (sorted), as str or UTF-8 bytes."""
    if len(_suffixes) < count:
        _suffixes.extend(f"{i:08d}" for i in range(len(_suffixes), count))
    keys = [prefix + s for s in _suffixes[:count]]
    return [k.encode() for k in keys] if as_bytes else keys


# ---------------------------------------------------------------- systems
class System(abc.ABC):
    """One store under test: setup/teardown plus per-op callables the timed loops call."""

    name = ""
    key_bytes = False
    path_kinds: tuple[str, ...] = tuple(PATH_KINDS)

    @abc.abstractmethod
    def backend(self, path_kind: str) -> str:
        ...

    @abc.abstractmethod
    def setup(self, d: Path, path_kind: str, fixture: list, value: bytes) -> None:
        ...

    @abc.abstractmethod
    def putter(self, thread_idx: int):
        ...

    @abc.abstractmethod
    def getter(self):
        """key -> the value bytes."""
        ...

    has_info_get = False

    def info_getter(self):
        """key -> (value, metadata), where the system has such a read (has_info_get); else None."""
        return

    @abc.abstractmethod
    def deleter(self):
        ...

    @abc.abstractmethod
    def lister(self):
        """page(prefix, after) -> (objects on the page, the last key or None at the end)."""
        ...

    @abc.abstractmethod
    def value_size(self, key) -> int:
        ...

    @abc.abstractmethod
    def count(self) -> int:
        ...

    def persist_count(self) -> int | None:
        return None

    def close(self) -> None:
        pass

    # replace: durable random replaces on a large store on disk, filled by reopen_fill
    def replace_supported(self) -> bool:
        """True: replace_open() opens the store reopen_fill made, durable, as setup() does,
        so putter, persist_count and close serve it."""
        return False

    # reopen: fill (fast path), close; then timed opens
    def reopen_supported(self) -> bool:
        return False


class PmstoreSystem(System):
    key_bytes = False
    has_info_get = True

    def __init__(self, name: str, durability: str):
        self.name, self.durability = name, durability
        self.s: Store | None = None

    def backend(self, path_kind: str) -> str:
        if self.durability == "os":
            return "none"
        return "flush" if path_kind == "dev-shm" else "msync"

    def _open(self, backend: str) -> Store:
        return Store.open(self.path, durability=self.durability if backend != "none" else "os", backend=backend)

    def setup(self, d, path_kind, fixture, value):
        self.path = d / "store.heap"
        with Store.open(self.path, durability="os", backend="none") as s:   # untimed fill without barriers
            for k in fixture:
                s.put(k, value)
        self.s = self._open(self.backend(path_kind))

    def putter(self, thread_idx):
        return self.s.put

    def getter(self):
        return self.s.get_value

    def info_getter(self):
        return self.s.get

    def deleter(self):
        return self.s.delete

    def lister(self):
        lst = self.s.list

        def page(prefix, after):
            infos, nxt = lst(prefix, after, PAGE_SIZE)
            return len(infos), nxt
        return page

    def value_size(self, key):
        return len(self.s.get(key)[0])

    def count(self):
        return len(self.s)

    def persist_count(self):
        return self.s.heap.persist_count

    def close(self):
        if self.s is not None:
            self.s.close()
            self.s = None

    def reopen_supported(self):
        return self.durability == "sync"

    def reopen_fill(self, d, keys_from, keys, value):
        self.path = d / "reopen.heap"
        with Store.open(self.path, durability="os", backend="none") as s:
            for k in keys:
                s.put(k, value)

    def reopen_timed(self, probe_key, crash: bool) -> tuple[float, dict]:
        backend = self.backend(REOPEN_PATH_KIND)
        if crash:       # a store in use, with a commit just made, dropped without a clean close
            s = self._open(backend)
            s.put("crash/probe", b"c" * REOPEN_VALUE_SIZE)
            s.abandon()
        gc.collect()
        t0 = time.perf_counter()
        s = self._open(backend)
        s.get(probe_key)
        ms = (time.perf_counter() - t0) * 1e3
        rep = s.report
        detail = {"was_clean": rep.get("was_clean"), "replay_ms": round(rep.get("replay_ms", 0.0), 3),
                  "scan_ms": round(rep.get("scan_ms", 0.0), 3), "index_ms": round(rep.get("index_ms", 0.0), 3),
                  "lanes_replayed": rep.get("lanes_replayed")}
        s.close()
        return ms, detail

    def reopen_space(self, data_bytes: int) -> dict:
        with self._open("none") as s:
            used = s.heap.stats()["bytes_used"]
        return {"space_used_bytes": used, "space_data_bytes": data_bytes, "space_ratio": round(used / data_bytes, 3)}

    def reopen_count(self) -> int:
        with self._open("none") as s:
            return len(s)

    def replace_supported(self):
        return self.durability == "sync"

    def replace_open(self):
        self.s = self._open(self.backend("tmp-file"))

    def checkpoint_count(self) -> int:
        return self.s.heap.mapping.journal_stats()["checkpoints"]


class LmdbSystem(System):
    key_bytes = True

    def __init__(self, name: str, writemap: bool):
        self.name, self.writemap = name, writemap
        self.env = None

    def backend(self, path_kind):
        return "writemap+sync" if self.writemap else "sync"

    def _open(self, path):
        return lmdb.open(str(path), map_size=LMDB_MAP_SIZE, subdir=True, sync=True, metasync=True,
                         writemap=self.writemap, max_readers=256)

    def setup(self, d, path_kind, fixture, value):
        self.env = self._open(d / "lmdb")
        with self.env.begin(write=True) as txn:
            for k in fixture:
                txn.put(k, value)

    def putter(self, thread_idx):
        begin = self.env.begin

        def put(k, v):
            with begin(write=True) as txn:
                txn.put(k, v)
        return put

    def getter(self):
        begin = self.env.begin

        def get(k):
            with begin() as txn:
                return txn.get(k)
        return get

    def deleter(self):
        begin = self.env.begin

        def delete(k):
            with begin(write=True) as txn:
                txn.delete(k)
        return delete

    def lister(self):
        begin = self.env.begin

        def page(prefix, after):
            start = after + b"\x00" if after else prefix     # the smallest key after `after`
            rows, plen = [], len(prefix)
            with begin(buffers=True) as txn:
                cur = txn.cursor()
                if cur.set_range(start):
                    for k, v in cur:
                        if k[:plen] != prefix or len(rows) == PAGE_SIZE + 1:
                            break
                        rows.append((bytes(k), len(v)))
            more = len(rows) > PAGE_SIZE
            rows = rows[:PAGE_SIZE]
            return len(rows), (rows[-1][0] if more else None)
        return page

    def value_size(self, key):
        with self.env.begin() as txn:
            return len(txn.get(key))

    def count(self):
        return self.env.stat()["entries"]

    def close(self):
        if self.env is not None:
            self.env.close()
            self.env = None

    def reopen_supported(self):
        return not self.writemap

    def reopen_fill(self, d, keys_from, keys, value):
        self.path = d / "reopen-lmdb"
        env = self._open(self.path)
        with env.begin(write=True) as txn:
            for k in keys:
                txn.put(k, value)
        env.close()

    def reopen_timed(self, probe_key, crash):
        gc.collect()
        t0 = time.perf_counter()
        env = self._open(self.path)
        with env.begin() as txn:
            txn.get(probe_key)
        ms = (time.perf_counter() - t0) * 1e3
        env.close()
        return ms, {}

    def reopen_space(self, data_bytes):
        env = self._open(self.path)
        used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        env.close()
        return {"space_used_bytes": used, "space_data_bytes": data_bytes, "space_ratio": round(used / data_bytes, 3)}

    def reopen_count(self):
        env = self._open(self.path)
        n = env.stat()["entries"]
        env.close()
        return n

    def replace_supported(self):
        return not self.writemap

    def replace_open(self):
        self.env = self._open(self.path)


class SqliteSystem(System):
    key_bytes = True
    name = "sqlite"
    PUT = "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)"
    GET = "SELECT v FROM kv WHERE k = ?"
    DELETE = "DELETE FROM kv WHERE k = ?"
    LIST_FIRST = "SELECT k, length(v) FROM kv WHERE k >= ? AND k < ? ORDER BY k LIMIT ?"
    LIST_AFTER = "SELECT k, length(v) FROM kv WHERE k > ? AND k < ? ORDER BY k LIMIT ?"

    def __init__(self):
        self.conns: dict[int, object] = {}

    def backend(self, path_kind):
        return "wal-full"

    def _connect(self, path):
        c = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        return c

    def _fill(self, path, keys, value):
        c = self._connect(path)
        c.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        c.execute("BEGIN")
        c.executemany(self.PUT, ((k, value) for k in keys))
        c.execute("COMMIT")
        return c

    def setup(self, d, path_kind, fixture, value):
        self.path = d / "kv.db"
        self.conns = {0: self._fill(self.path, fixture, value)}

    def _conn(self, thread_idx):
        if thread_idx not in self.conns:
            self.conns[thread_idx] = self._connect(self.path)
        return self.conns[thread_idx]

    def putter(self, thread_idx):
        ex, sql = self._conn(thread_idx).execute, self.PUT

        def put(k, v):
            ex(sql, (k, v))
        return put

    def getter(self):
        ex, sql = self._conn(0).execute, self.GET

        def get(k):
            return ex(sql, (k,)).fetchone()[0]
        return get

    def deleter(self):
        ex, sql = self._conn(0).execute, self.DELETE

        def delete(k):
            ex(sql, (k,))
        return delete

    def lister(self):
        ex = self._conn(0).execute

        def page(prefix, after):
            hi = prefix + b"\xff"      # keys are UTF-8 without 0xff bytes
            rows = ex(self.LIST_AFTER if after else self.LIST_FIRST, (after or prefix, hi, PAGE_SIZE + 1)).fetchall()
            more = len(rows) > PAGE_SIZE
            rows = rows[:PAGE_SIZE]
            return len(rows), (rows[-1][0] if more else None)
        return page

    def value_size(self, key):
        return len(self.getter()(key))

    def count(self):
        return self._conn(0).execute("SELECT count(*) FROM kv").fetchone()[0]

    def close(self):
        for c in self.conns.values():
            c.close()
        self.conns = {}

    def reopen_supported(self):
        return True

    def reopen_fill(self, d, keys_from, keys, value):
        self.path = d / "reopen.db"
        self._fill(self.path, keys, value).close()

    def reopen_timed(self, probe_key, crash):
        gc.collect()
        t0 = time.perf_counter()
        c = self._connect(self.path)
        c.execute(self.GET, (probe_key,)).fetchone()
        ms = (time.perf_counter() - t0) * 1e3
        c.close()
        return ms, {}

    def reopen_space(self, data_bytes):
        c = self._connect(self.path)
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        used = c.execute("PRAGMA page_count").fetchone()[0] * c.execute("PRAGMA page_size").fetchone()[0]
        c.close()
        return {"space_used_bytes": used, "space_data_bytes": data_bytes, "space_ratio": round(used / data_bytes, 3)}

    def reopen_count(self):
        c = self._connect(self.path)
        n = c.execute("SELECT count(*) FROM kv").fetchone()[0]
        c.close()
        return n


class DictSystem(System):
    name = "dict"
    key_bytes = False
    path_kinds = ("dram",)

    def backend(self, path_kind):
        return "volatile"

    def setup(self, d, path_kind, fixture, value):
        self.d = dict.fromkeys(fixture, value)
        self.sorted_keys = sorted(fixture)      # list runs over the fixture only, which never changes

    def putter(self, thread_idx):
        return self.d.__setitem__

    def getter(self):
        return self.d.__getitem__

    def deleter(self):
        return self.d.__delitem__

    def lister(self):
        d, sk = self.d, self.sorted_keys

        def page(prefix, after):
            i = bisect.bisect_right(sk, after) if after else bisect.bisect_left(sk, prefix)
            rows = [(k, len(d[k])) for k in sk[i:i + PAGE_SIZE + 1] if k.startswith(prefix)]
            more = len(rows) > PAGE_SIZE
            rows = rows[:PAGE_SIZE]
            return len(rows), (rows[-1][0] if more else None)
        return page

    def value_size(self, key):
        return len(self.d[key])

    def count(self):
        return len(self.d)

    def close(self):
        self.d = {}


def make_systems(names: list[str]) -> tuple[list[System], dict[str, str]]:
    systems, skipped = [], {}
    for n in names:
        if n in ("lmdb", "lmdb-writemap") and lmdb is None:
            skipped[n] = f"py-lmdb is not installed ({INSTALL_HINT['lmdb']})"
        elif n == "sqlite" and sqlite3 is None:
            skipped[n] = "this Python has no sqlite3 module"
        elif n == "pmstore":
            systems.append(PmstoreSystem("pmstore", "sync"))
        elif n == "pmstore-os":
            systems.append(PmstoreSystem("pmstore-os", "os"))
        elif n == "lmdb":
            systems.append(LmdbSystem("lmdb", writemap=False))
        elif n == "lmdb-writemap":
            systems.append(LmdbSystem("lmdb-writemap", writemap=True))
        elif n == "sqlite":
            systems.append(SqliteSystem())
        elif n == "dict":
            systems.append(DictSystem())
    return systems, skipped


# ---------------------------------------------------------------- one case: system x path x value size
class PhaseStats:
    def __init__(self):
        self.rates: list[float] = []
        self.ops = 0
        self.persists: int | None = None     # None: the system has no barrier counter
        self.extra: dict = {}


def timed(sysobj: System, stats: PhaseStats, make_worker, threads: int, duration_s: float,
          max_count: int | None = None, rate_of=None) -> common.TimedRun:
    before = sysobj.persist_count()
    run = common.run_timed(make_worker, threads, duration_s, max_count)
    after = sysobj.persist_count()
    if before is not None:
        stats.persists = (stats.persists or 0) + after - before
    stats.ops += run.op_count
    stats.rates.append(rate_of(run) if rate_of else run.ops_per_s)
    return run


def put_cap(value_size: int, threads: int, last_ops: int | None) -> int:
    """Keys per thread for a put phase: the op and byte caps, and (after a first run)
    2.5x what the previous run of this phase managed, so we don't build keys for nothing."""
    cap = min(OPS_CAP, BYTE_CAP // value_size) // threads
    if last_ops is not None:
        cap = min(cap, int(2.5 * last_ops / threads) + 256)
    return max(cap, 1)


class Case:
    """One system's state through the runs of one (path, value size): its fixture, the
    stats per phase, and how many objects it must hold at the end."""

    def __init__(self, sysobj: System, path_kind: str, value_size: int, put_threads: list[int], seed: int):
        self.sys, self.path_kind, self.value_size, self.put_threads = sysobj, path_kind, value_size, put_threads
        self.rnd = random.Random(seed * 7919 + value_size)
        self.value = self.rnd.randbytes(value_size)
        self.fixture = make_keys("f/", FIXTURE_COUNT[value_size], sysobj.key_bytes)
        self.prefix = b"f/" if sysobj.key_bytes else "f/"
        self.stats = {("put", t): PhaseStats() for t in put_threads}
        self.stats.update({(w, 1): PhaseStats() for w in ("get", "list", "delete")})
        if sysobj.has_info_get:
            self.stats[("get-info", 1)] = PhaseStats()
        self.last_put_ops: dict[int, int] = {}
        self.expected_count = len(self.fixture)
        self.fs = "-"

    def one_run(self, r: int, phase_s: float) -> None:
        """put (N threads, then 1), get, list, delete: one timed run of each phase."""
        sysobj, value, as_bytes = self.sys, self.value, self.sys.key_bytes
        put1_keys: list = []
        for t in sorted(self.put_threads, reverse=True):
            cap = put_cap(self.value_size, t, self.last_put_ops.get(t))
            keys = [make_keys(f"p{r}.{t}.{i}/", cap, as_bytes) for i in range(t)]

            def make_put(i, keys=keys):
                it, put = iter(keys[i]), sysobj.putter(i)

                def work(n):
                    for k in islice(it, n):
                        put(k, value)
                return work
            run = timed(sysobj, self.stats[("put", t)], make_put, t, phase_s, max_count=cap)
            self.last_put_ops[t] = run.op_count
            self.expected_count += run.op_count
            if t == 1:
                put1_keys = keys[0][:run.op_count]

        shuffled = self.fixture[:]
        self.rnd.shuffle(shuffled)

        for workload, make_getter in (("get", sysobj.getter), ("get-info", sysobj.info_getter)):
            if (workload, 1) not in self.stats:
                continue

            def make_get(i, make_getter=make_getter):
                it, get = cycle(shuffled), make_getter()

                def work(n):
                    for k in islice(it, n):
                        get(k)
                return work
            timed(sysobj, self.stats[(workload, 1)], make_get, 1, phase_s)
        if sysobj.value_size(shuffled[0]) != self.value_size:
            raise SystemExit(f"store.py: {sysobj.name} returned a value of the wrong size")

        listed, prefix = [0], self.prefix

        def make_list(i):
            page, state = sysobj.lister(), [None]

            def work(n):
                for _ in range(n):
                    got, state[0] = page(prefix, state[0])
                    listed[0] += got
            return work
        lst = self.stats[("list", 1)]
        run = timed(sysobj, lst, make_list, 1, phase_s, rate_of=lambda run: listed[0] / run.elapsed_s)
        lst.extra.setdefault("pages_per_s", []).append(run.ops_per_s)

        if put1_keys:
            self.rnd.shuffle(put1_keys)

            def make_delete(i):
                it, delete = iter(put1_keys), sysobj.deleter()

                def work(n):
                    for k in islice(it, n):
                        delete(k)
                return work
            run = timed(sysobj, self.stats[("delete", 1)], make_delete, 1, DELETE_TIME_FACTOR * phase_s,
                        max_count=len(put1_keys))
            self.expected_count -= run.op_count

    def check(self) -> None:
        got = self.sys.count()
        if got != self.expected_count:
            raise SystemExit(f"store.py: {self.sys.name} on {self.path_kind} holds {got} objects after the case, "
                             f"expected {self.expected_count}")

    def rows(self) -> list[dict]:
        rows = []
        for (workload, threads), st in self.stats.items():
            if not st.rates:
                continue
            ops_per_s = common.median(st.rates)
            row = {"system": self.sys.name, "workload": workload, "threads": threads,
                   "backend": self.sys.backend(self.path_kind), "path_kind": self.path_kind, "fs": self.fs,
                   "value_size": self.value_size, "ops_per_s": round(ops_per_s, 1),
                   "us_per_op": round(threads * 1e6 / ops_per_s, 3) if ops_per_s else None,
                   "persists_per_op": round(st.persists / st.ops, 3) if st.persists is not None and st.ops else None,
                   "ops": st.ops, "median_of": len(st.rates), "runs": [round(x, 1) for x in st.rates]}
            if workload == "list":
                row.update(page_size=PAGE_SIZE, pages_per_s=round(common.median(st.extra["pages_per_s"]), 1))
            if workload in ("get", "get-info", "list"):
                row["objects"] = len(self.fixture)
            rows.append(row)
        return rows


def bench_cases(systems: list[System], path_kind: str, value_size: int, put_threads: list[int], args) -> list[dict]:
    """Every system on one (path, value size), side by side: all are set up first, then
    run r of each system runs before run r+1 of any, so a noisy spell (a shared disk)
    hits them alike. Each system's files live in their own scratch dir."""
    phase_s = args.duration_s / PHASES_PER_RUN
    cases = []
    with contextlib.ExitStack() as stack:
        for sysobj in systems:
            pk = "dram" if sysobj.path_kinds == ("dram",) else path_kind
            case = Case(sysobj, pk, value_size, put_threads, args.seed)
            d = stack.enter_context(common.scratch_dir("dev-shm" if pk == "dram" else pk))
            sysobj.setup(d, pk, case.fixture, case.value)
            stack.callback(sysobj.close)
            case.fs = common.fs_type(d) if pk != "dram" else "-"
            cases.append(case)
        for r in range(args.run_count):
            for case in cases:
                common.note(f"store: {case.sys.name} {case.path_kind} {value_size} B run {r + 1}/{args.run_count}")
                case.one_run(r, phase_s)
        for case in cases:
            case.check()
    return [row for case in cases for row in case.rows()]


# ---------------------------------------------------------------- reopen
def bench_reopen(sysobj: System, counts: list[int], args) -> list[dict]:
    """Fill to each count (fast, untimed), then time open + one get after a clean close
    (and, for pmstore, after Store.abandon with a commit just made)."""
    rows = []
    value = random.Random(args.seed).randbytes(REOPEN_VALUE_SIZE)
    runs = args.run_count
    with common.scratch_dir(REOPEN_PATH_KIND) as d:
        have = 0
        for n in sorted(counts):
            keys = make_keys("o/", n, sysobj.key_bytes)
            sysobj.reopen_fill(d, have, keys[have:], value)
            have = n
            probe = keys[n // 2]
            data_bytes = sum(len(k if sysobj.key_bytes else k.encode()) for k in keys) + n * REOPEN_VALUE_SIZE
            space = sysobj.reopen_space(data_bytes) if n == SPACE_OBJECTS else {}
            kinds = ["reopen-clean"] + (["reopen-crash"] if isinstance(sysobj, PmstoreSystem) else [])
            for kind in kinds:
                timings = [sysobj.reopen_timed(probe, crash=kind == "reopen-crash") for _ in range(runs)]
                ms_list = [t[0] for t in timings]
                ms = common.median(ms_list)
                detail = timings[ms_list.index(sorted(ms_list)[len(ms_list) // 2])][1]
                rows.append({"system": sysobj.name, "workload": kind, "threads": 1,
                             "backend": sysobj.backend(REOPEN_PATH_KIND), "path_kind": REOPEN_PATH_KIND,
                             "fs": common.fs_type(d), "value_size": REOPEN_VALUE_SIZE, "objects": n,
                             "ops_per_s": round(1e3 / ms, 2), "reopen_ms": round(ms, 3),
                             "median_of": runs, "runs_ms": [round(x, 3) for x in ms_list], **detail})
                if space and kind == "reopen-clean":
                    rows[-1].update(space)
            want = n + (1 if isinstance(sysobj, PmstoreSystem) else 0)     # the crash probe key
            got = sysobj.reopen_count()
            if got != want:
                raise SystemExit(f"store.py: {sysobj.name} reopened with {got} objects, expected {want}")
            if isinstance(sysobj, PmstoreSystem):
                have = n        # "crash/probe" sorts after "o/..." and is overwritten each time
    return rows


# ---------------------------------------------------------------- replace on a large store
def bench_replace(sysobj: System, n: int, args) -> dict:
    """Fill n objects of 100 B in a file under /tmp (untimed), reopen it durable, then time
    replaces of random keys from one thread: --runs runs of --duration-s. Reports ops/s
    (median of the runs) and the latency tail over every op; on pmstore the tail is the
    barrier journal's checkpoints (FORMAT.md 7.11), counted."""
    rng = random.Random(args.seed)
    values = [rng.randbytes(REOPEN_VALUE_SIZE) for _ in range(2)]
    keys = make_keys("o/", n, sysobj.key_bytes)
    lat: list[int] = []
    rates = []
    pm = isinstance(sysobj, PmstoreSystem)
    with common.scratch_dir("tmp-file") as d:
        sysobj.reopen_fill(d, 0, keys, values[0])
        sysobj.replace_open()
        put = sysobj.putter(0)
        try:
            before = (sysobj.persist_count(), sysobj.checkpoint_count()) if pm else None
            clock = time.perf_counter_ns
            for _ in range(args.run_count):
                t0 = clock()
                t_end = t0 + int(args.duration_s * 1e9)
                count = 0
                while count % 64 or clock() < t_end:
                    k = keys[rng.randrange(n)]
                    a = clock()
                    put(k, values[count & 1])
                    lat.append(clock() - a)
                    count += 1
                rates.append(count * 1e9 / (clock() - t0))
            after = (sysobj.persist_count(), sysobj.checkpoint_count()) if pm else None
        finally:
            sysobj.close()
        fs = common.fs_type(d)
    lat.sort()

    def us_at(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] / 1e3, 1)
    rate = common.median(rates)
    row = {"system": sysobj.name, "workload": "replace", "threads": 1, "backend": sysobj.backend("tmp-file"),
           "path_kind": "tmp-file", "fs": fs, "value_size": REOPEN_VALUE_SIZE, "objects": n,
           "ops_per_s": round(rate, 1), "us_per_op": round(1e6 / rate, 3),
           "median_of": len(rates), "ops": len(lat), "us_p50": us_at(0.5), "us_p99": us_at(0.99),
           "us_p999": us_at(0.999), "ms_max": round(lat[-1] / 1e6, 2),
           "ms_over_5ms": round(sum(x for x in lat if x > 5_000_000) / 1e6, 1)}
    if pm:
        row["persists_per_op"] = round((after[0] - before[0]) / len(lat), 3)
        row["checkpoints"] = after[1] - before[1]
    return row


# ---------------------------------------------------------------- derived keys
def add_ratios(results: list[dict]) -> None:
    """vs_lmdb_sync: ops_per_s / py-lmdb's (default sync) for the same workload, value size,
    threads and path (the dict ceiling against LMDB on /dev/shm; get-info against get)."""
    def size(r):    # replace runs once per store size
        return r["objects"] if r["workload"] == "replace" else None
    ref = {(r["workload"], r["value_size"], r["threads"], r["path_kind"], size(r)): r["ops_per_s"]
           for r in results if r["system"] == "lmdb" and not r["workload"].startswith("reopen")}
    for r in results:
        if r["workload"].startswith("reopen"):
            continue
        path = "dev-shm" if r["path_kind"] == "dram" else r["path_kind"]
        workload = "get" if r["workload"] == "get-info" else r["workload"]     # vs LMDB's only read
        base = ref.get((workload, r["value_size"], r["threads"], path, size(r)))
        r["vs_lmdb_sync"] = round(r["ops_per_s"] / base, 3) if base else None


def add_space(results: list[dict]) -> None:
    """Copy each system's space figures (its reopen fill of 100,000 x 100 B) onto its
    1-thread 100 B put rows: what the store spends per byte of key + value."""
    space = {r["system"]: {k: r[k] for k in ("space_used_bytes", "space_data_bytes", "space_ratio")}
             for r in results if "space_ratio" in r}
    for r in results:
        if r["workload"] == "put" and r["value_size"] == 100 and r["threads"] == 1:
            src = space.get(r["system"]) or space.get({"pmstore-os": "pmstore", "lmdb-writemap": "lmdb"}
                                                       .get(r["system"], ""))
            if src:
                r.update(src, space_objects=SPACE_OBJECTS)


# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    p = common.make_parser(__doc__.splitlines()[0])
    p.add_argument("--systems", type=common.str_list, default=SYSTEMS, metavar="S,..",
                   help=f"systems to run (default {','.join(SYSTEMS)})")
    p.add_argument("--paths", type=common.str_list, default=PATH_KINDS, metavar="P,..",
                   help="where the stores live: dev-shm, tmp-file (default both)")
    p.add_argument("--sizes", type=common.int_list, default=VALUE_SIZES, metavar="N,..",
                   help="value sizes in bytes (default 100,4096,65536)")
    p.add_argument("--threads", type=common.int_list, default=[1, 8], metavar="N,..",
                   help="writer threads for put (default 1,8; 1 is always run: delete uses its keys)")
    p.add_argument("--mt-sizes", type=common.int_list, default=None, metavar="N,..",
                   help="value sizes that get the multi-thread put runs (default: all of --sizes)")
    p.add_argument("--reopen-objects", type=common.int_list, default=None, metavar="N,..",
                   help="object counts for the reopen timings (default 10000,100000,1000000; "
                        "10000,100000 with --quick)")
    p.add_argument("--no-reopen", action="store_true", help="skip the reopen timings")
    p.add_argument("--replace-objects", type=common.int_list, default=[], metavar="N,..",
                   help="also time durable replaces of random keys in stores of N objects of 100 B on a "
                        "file under /tmp: ops/s and the latency tail (p50/p99/p99.9/max; default none)")
    p.add_argument("--seed", type=int, default=1, help="seed for values and key orders (default 1)")
    args = common.parse_args(p, argv)
    for name, values, allowed in (("system", args.systems, SYSTEMS), ("path", args.paths, PATH_KINDS),
                                  ("size", args.sizes, list(FIXTURE_COUNT))):
        common.check_choices(p, name, values, allowed)
    put_threads = sorted({1, *args.threads})
    mt_sizes = args.mt_sizes or args.sizes
    reopen_counts = args.reopen_objects or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])

    systems, skipped = make_systems(args.systems)
    for system, reason in skipped.items():
        print(f"store.py: skipping {system}: {reason}", file=sys.stderr)
    t_start = time.perf_counter()
    results: list[dict] = []
    for value_size in args.sizes:
        threads = put_threads if value_size in mt_sizes else [1]
        for path_kind in args.paths:
            # the volatile dict runs once per value size, with the first path
            group = [x for x in systems if x.path_kinds != ("dram",) or path_kind == args.paths[0]]
            results += bench_cases(group, path_kind, value_size, threads, args)
    if not args.no_reopen:
        for sysobj in systems:
            if sysobj.reopen_supported():
                common.note(f"store: reopen {sysobj.name}")
                results += bench_reopen(sysobj, reopen_counts, args)
    for n in args.replace_objects:
        for sysobj in systems:
            if sysobj.replace_supported():
                common.note(f"store: replace {sysobj.name}, {n} objects")
                results.append(bench_replace(sysobj, n, args))
    add_ratios(results)
    add_space(results)
    env = common.environment(flush_kind=_native.flush_kind(), duration_s=args.duration_s,
                             phase_s=args.duration_s / PHASES_PER_RUN, runs=args.run_count, quick=args.quick,
                             seed=args.seed, skipped=skipped, elapsed_s=round(time.perf_counter() - t_start, 1),
                             lmdb=(f"py-lmdb {lmdb.__version__}, LMDB {'.'.join(map(str, lmdb.version()))}"
                                   if lmdb else None),
                             sqlite=sqlite3.sqlite_version if sqlite3 else None)
    common.emit("store", results, args.json, env, columns=TABLE_COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
