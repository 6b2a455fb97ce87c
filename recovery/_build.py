"""cffi build script for the independent checker's hot loops (recovery/csrc/walk.c).

A separate extension from the allocator's on purpose: the checker must not share code
with what it checks. recovery/check.py falls back to pure Python where it is not built
(a mutant's scratch tree, for one); tests/unit/test_check_store.py checks both agree.
"""

import pathlib
import re

from cffi import FFI

CSRC = pathlib.Path(__file__).parent / "csrc"


def _cdef_text() -> str:
    out = []
    for line in (CSRC / "walk.h").read_text().splitlines():
        s = line.strip()
        if s.startswith(("#ifndef", "#endif", "#include")) or (s.startswith("#define") and len(s.split()) < 3):
            continue
        out.append(line)
    return re.sub(r"/\*.*?\*/", "", "\n".join(out), flags=re.DOTALL)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source("recovery._walk_c", '#include "walk.h"\n', sources=[str(CSRC / "walk.c")],
                      include_dirs=[str(CSRC)],
                      extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-fno-strict-aliasing"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
