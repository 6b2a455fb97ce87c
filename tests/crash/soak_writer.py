"""kill -9 soak writer: several threads put, replace, delete and batch until SIGKILLed.

    python tests/crash/soak_writer.py PATH DURABILITY SEED THREADS KEYS_PER_THREAD

Run by tests/crash/test_kill9_soak.py, which kills it at a random moment and then checks
the store. Protocol on stdout, one line per os.write (atomic on a pipe: a line is whole
or absent, and once written the parent can read it after this process dies):
  R                             the store is open (recovery done); threads start
  B tid n item [item ...]       thread tid begins op n; item = P,key,size,sha256 | D,key
  A tid n                       op n of thread tid returned (acknowledged)
Thread tid owns the keys t{tid}/..., so each key's ops are ordered by one thread's
program order and an op's B/A lines bracket it. A batch is one op (all or nothing).
A failure exits non-zero with a traceback: 1 at open, 3 in a writer thread (an exception,
such as NoSuchKeyError for a key this thread saw put).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading
import traceback

from store import Store

BATCH_SHARE, DELETE_SHARE = 0.15, 0.2
# value sizes (bytes): mostly small, some medium, some above 64 KiB (whole-page spans)
SIZE_RANGES = [(0.55, 0, 1000), (0.25, 1000, 16 << 10), (0.12, 16 << 10, 64 << 10), (0.08, (64 << 10) + 1, 256 << 10)]


def emit(line: str) -> None:
    os.write(1, (line + "\n").encode())


def die(args: threading.ExceptHookArgs) -> None:
    """A writer thread failed: say why and exit 3 at once (the parent expects only SIGKILL)."""
    sys.stderr.write("".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))
    sys.stderr.flush()
    os._exit(3)


def value_for(rng: random.Random) -> bytes:
    r = rng.random()
    for share, lo, hi in SIZE_RANGES:
        if r < share:
            return rng.randbytes(rng.randint(lo, hi))
        r -= share
    return b""


def writer(s: Store, tid: int, seed: int, key_count: int) -> None:
    rng = random.Random(seed * 1009 + tid)
    keys = [f"t{tid}/k{i:03d}" for i in range(key_count)]
    present = {i.key for i in s.list(prefix=f"t{tid}/", limit=key_count + 1)[0]}
    n = 0
    while True:
        n += 1
        r = rng.random()
        if r < BATCH_SHARE:
            ops = [(k, value_for(rng) if rng.random() < 0.7 else None)
                   for k in rng.sample(keys, rng.randint(2, 4))]
        elif r < BATCH_SHARE + DELETE_SHARE and present:
            ops = [(rng.choice(sorted(present)), None)]
        else:
            ops = [(rng.choice(keys), value_for(rng))]
        items = [f"P,{k},{len(v)},{hashlib.sha256(v).hexdigest()}" if v is not None else f"D,{k}"
                 for k, v in ops]
        emit(f"B {tid} {n} " + " ".join(items))
        if r < BATCH_SHARE:
            with s.batch() as b:
                for k, v in ops:
                    b.put(k, v) if v is not None else b.delete(k)
        elif ops[0][1] is None:
            s.delete(ops[0][0])        # NoSuchKeyError here: a key this thread saw is gone
        else:
            s.put(ops[0][0], ops[0][1])
        emit(f"A {tid} {n}")
        for k, v in ops:
            present.add(k) if v is not None else present.discard(k)


def main(argv: list[str]) -> None:
    path, durability, seed, thread_count, key_count = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    s = Store.open(path, create=False, durability=durability)   # a failure exits 1 with its traceback
    emit("R")
    threading.excepthook = die
    for tid in range(thread_count):
        threading.Thread(target=writer, args=(s, tid, seed, key_count), daemon=True).start()
    sys.stdin.buffer.read()     # blocks until the parent dies or closes stdin: never outlive it
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
