"""Build script: maps the top-level folders onto the `edgefleet` namespace and builds the C++ extension.

Metadata and tool settings live in pyproject.toml; this file holds only what needs code: the folder
mapping (`package_dir`) and the pybind11 extension, with a clear message when no C++ compiler exists.
"""

from __future__ import annotations

import os
from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup
from setuptools.errors import CCompilerError, CompileError, ExecError, PlatformError

# Each top-level folder is one subpackage of the `edgefleet` namespace (no edgefleet/__init__.py).
TOP_LEVEL = {
    "core": "edgefleet.core",
    "compilers": "edgefleet.compilers",
    "cloud": "edgefleet.cloud",
    "edge_runtime": "edgefleet.edge_runtime",
    "cpp_ext": "edgefleet.cpp_ext",
    "cli": "edgefleet.cli",
}


def discover_packages() -> dict[str, str]:
    """Every folder with an __init__.py below a top-level folder becomes a package."""
    mapping: dict[str, str] = {}
    for folder, package in TOP_LEVEL.items():
        for root, _dirs, files in os.walk(folder):
            if "__init__.py" in files:
                rel = os.path.relpath(root, folder)
                name = package if rel == "." else package + "." + rel.replace(os.sep, ".")
                mapping[name] = root
    return mapping


NO_COMPILER = """
edgefleet: building the native extension (edgefleet.cpp_ext._native) failed.
It needs a C++17 compiler and the Python headers, for example:
    Debian/Ubuntu/Raspberry Pi OS:  sudo apt-get install g++ python3-dev
    Fedora:                         sudo dnf install gcc-c++ python3-devel
then run the install again. The compiler said: {err}
"""


class BuildExtWithMessage(build_ext):
    """build_ext that turns a missing or failing compiler into one readable message."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, CompileError, ExecError, PlatformError, OSError) as err:
            raise SystemExit(NO_COMPILER.format(err=err)) from err

    def build_extension(self, ext) -> None:  # noqa: ANN001 - setuptools' own signature
        try:
            super().build_extension(ext)
        except (CCompilerError, CompileError, ExecError, PlatformError, OSError) as err:
            raise SystemExit(NO_COMPILER.format(err=err)) from err


# Compile the extension's sources in parallel (one job per core; EDGEFLEET_BUILD_JOBS overrides): the
# graph kernels are a dozen files, and under qemu (scripts/check-aarch64) each takes tens of seconds.
ParallelCompile("EDGEFLEET_BUILD_JOBS", default=0).install()

native = Pybind11Extension(
    "edgefleet.cpp_ext._native",
    sorted(glob("cpp_ext/src/*.cpp")),
    include_dirs=["cpp_ext/src"],
    cxx_std=17,
    # Portable build: no -march=native in anything we ship (see STYLE.md, point 6). No fused multiply-add
    # contraction either: the telemetry features must be bit-identical to the numpy reference on x86 and
    # aarch64 alike, or a value on a bin edge lands in a different bin.
    extra_compile_args=["-O3", "-ffp-contract=off"],
)

packages = discover_packages()
setup(
    packages=sorted(packages),
    package_dir=packages,
    package_data={"edgefleet.cpp_ext": ["*.pyi", "py.typed"],
                  "edgefleet.cloud.dashboard": ["templates/*.html", "static/*.js"],
                  "edgefleet.cloud.migrations": ["script.py.mako", "versions/*.py"]},
    ext_modules=[native],
    cmdclass={"build_ext": BuildExtWithMessage},
)
