# Compiles the C core through cffi at install time; everything else is in pyproject.toml.
from setuptools import setup

setup(cffi_modules=["allocator/_build.py:ffibuilder"])
