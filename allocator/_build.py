"""cffi build script for the C core (out-of-line API mode, run by setuptools).

The cdef is read from csrc/pmd.h and csrc/pm_api.h, so the declarations Python sees
are the ones the C compiler sees. Knobs: PMSTORE_DEBUG=1 builds with asserts and -O0; PMSTORE_MUTANT=<name> builds a
deliberately broken protocol (crash-suite teeth; never for real use): see MUTANTS.
"""

import os
import pathlib
import re

from cffi import FFI

CSRC = pathlib.Path(__file__).parent / "csrc"
STORE_CSRC = pathlib.Path(__file__).parent.parent / "store" / "csrc"
STORE_SOURCES = ["index.c", "md5.c"]   # the store's C hot path (index lookup, object copy) in the same extension
# Each mutant removes one barrier, reorders one commit step, reuses freed memory too early,
# breaks the journal (skips its replay, or its record's barrier), publishes a new record's
# links as checked data (L8), makes a plain write durable under a sealed commit (L9), or
# skips a line a barrier must write back (recovery/mutants.py runs them).
MUTANTS = {"": "", **{m: f"-DPMSTORE_MUTANT_{m.upper()}" for m in
                      ("noinval", "noapplyfence", "nocheck", "nodata", "applyfirst", "earlyclear",
                       "nolimbo", "noreplay", "jnlnosync", "datalinks", "clearedgone", "txcheck",
                       "norangegone", "lineskip")}}
SOURCES = ["pmem.c", "crc32c.c", "trace.c", "redo.c", "journal.c", "classes.c", "span.c", "alloc.c"]


def _cdef_text(name: str, folder: pathlib.Path = CSRC) -> str:
    """Keep what cffi's cdef understands: integer #defines, structs, prototypes."""
    out = []
    for line in (folder / name).read_text().splitlines():
        s = line.strip()
        if s.startswith(("#ifndef", "#endif", "#include", "#pragma")):
            continue
        if s.startswith("#define") and len(s.split()) < 3:
            continue  # include guards
        out.append(re.sub(r"/\*.*?\*/", "", line))
    return re.sub(r"/\*.*?\*/", "", "\n".join(out), flags=re.DOTALL)


def _flags() -> list[str]:
    debug = os.environ.get("PMSTORE_DEBUG", "0")
    if debug not in ("0", "1"):
        raise SystemExit(f"PMSTORE_DEBUG must be 0 or 1, not {debug!r}")
    mutant = os.environ.get("PMSTORE_MUTANT", "")
    if mutant not in MUTANTS:
        raise SystemExit(f"PMSTORE_MUTANT must be one of {sorted(MUTANTS)}, not {mutant!r}")
    common = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fno-strict-aliasing"]
    common += [MUTANTS[mutant]] if mutant else []
    return common + (["-O0", "-g", "-DPMSTORE_DEBUG=1"] if debug == "1" else ["-O2", "-DNDEBUG"])


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text("pmd.h"))
ffibuilder.cdef(_cdef_text("pm_api.h"))
ffibuilder.cdef(_cdef_text("pmd_store.h", STORE_CSRC))
ffibuilder.cdef(_cdef_text("pm_index_api.h", STORE_CSRC))
ffibuilder.set_source(
    "allocator._pmstore_c",
    '#include "pmd.h"\n#include "pm_api.h"\n#include "pmd_store.h"\n#include "pm_index_api.h"\n',
    sources=[str(CSRC / s) for s in SOURCES] + [str(STORE_CSRC / s) for s in STORE_SOURCES],
    include_dirs=[str(CSRC), str(STORE_CSRC)],
    extra_compile_args=_flags(),
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
