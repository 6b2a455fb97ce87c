# Compiles the C code at install time: through cffi, the allocator's and store's core and the
# independent checker's hot loops (kept apart); as a plain CPython extension, the allocator's
# hot pair and the store's common read and put without cffi's per-call cost
# (allocator/csrc/cpython/fastcall.c says why).
# Everything else is in pyproject.toml.
from setuptools import Extension, setup

setup(cffi_modules=["allocator/_build.py:ffibuilder", "recovery/_build.py:ffibuilder"],
      ext_modules=[Extension("allocator._fast", ["allocator/csrc/cpython/fastcall.c"],
                             include_dirs=["allocator/csrc", "store/csrc"],
                             extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra",
                                                 "-Wno-unused-parameter"],
                             py_limited_api=True)],
      options={"bdist_wheel": {"py_limited_api": "cp311"}})
