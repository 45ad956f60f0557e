"""Builds the one C extension: server/frameloop.py, compiled by Cython (pure-Python mode).

Everything else about the package is in pyproject.toml. The extension is optional: where
there is no C compiler (or no Cython) the build goes on without it, and the same source
runs interpreted (server/frameloop.py says how to tell which one runs).
"""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # building without Cython: pure Python only
    ext_modules = []
else:
    ext_modules = cythonize(
        [Extension("server.frameloop", ["server/frameloop.py"], optional=True)],
        # The loop indexes `data` only below a length it has checked, never from the end.
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        quiet=True,
    )

setup(ext_modules=ext_modules)
