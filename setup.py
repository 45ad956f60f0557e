"""Builds the one C extension: server/fastpath.py, compiled by Cython (pure-Python mode).

Everything else about the package is in pyproject.toml. The extension is optional: where
there is no C compiler (or it fails) the install goes on without it, with a warning, and
the same source runs interpreted (server/fastpath.py says how to tell which one runs).
`optional=True` alone is not enough: an editable install (`pip install -e`, what `make`
does) aborts on a compiler that is missing or fails (seen with setuptools 84), so the
build command below catches that itself.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that turns any failure to compile into a warning, and then does not
    list the module it could not build among its outputs (the editable install would
    try to link the missing file)."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # no compiler, a failing one, missing headers...
            print(
                f"warning: could not compile {ext.name} ({exc}); "
                "it runs interpreted, slower but alike",
                file=sys.stderr,
            )

    def get_outputs(self) -> list[str]:
        return [path for path in super().get_outputs() if os.path.exists(path)]

    def get_output_mapping(self) -> dict[str, str]:
        mapping = super().get_output_mapping()
        return {built: dest for built, dest in mapping.items() if os.path.exists(built)}


try:
    from Cython.Build import cythonize
except ImportError:  # building without Cython: pure Python only
    ext_modules = []
else:
    ext_modules = cythonize(
        [Extension("server.fastpath", ["server/fastpath.py"])],
        # The loop indexes `data` only below a length it has checked, never from the end.
        compiler_directives={"language_level": "3", "boundscheck": False, "wraparound": False},
        quiet=True,
    )
    for ext in ext_modules:
        # Set here: cythonize does not carry `optional` over to the extensions it returns,
        # and setuptools copies an optional extension in place only if it was built.
        ext.optional = True

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
