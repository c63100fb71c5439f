"""Builds the optional Cython fast path.

The package must install and work without it: when Cython or a C compiler is
missing the extension is skipped and ``_fastpath.AVAILABLE`` is False, so the
pure-Python path (which gives identical results) is used.
"""
import glob
import os

from setuptools import setup

ext_modules = []
pyx = sorted(glob.glob(os.path.join("_fastpath", "*.pyx")))
if pyx and os.environ.get("FLANNEL_RECONCILER_NO_CYTHON") != "1":
    try:
        from Cython.Build import cythonize
    except ImportError:  # pragma: no cover - install without the accelerator
        cythonize = None
    if cythonize is not None:
        ext_modules = cythonize(pyx, language_level=3, quiet=True)

setup(ext_modules=ext_modules)
