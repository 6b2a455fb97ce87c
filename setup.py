# Compiles the C code through cffi at install time: the allocator's and store's core, and the
# independent checker's hot loops (kept apart). Everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["allocator/_build.py:ffibuilder", "recovery/_build.py:ffibuilder"])
