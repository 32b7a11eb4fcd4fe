"""Build the compiled evaluation kernel ``eval_lib._eval_cy``.

Metadata lives in pyproject.toml; this file only exists because the extension needs a custom
build step: OpenMP is used when the compiler supports it and silently left out otherwise, so
the build never fails for lack of OpenMP (the kernel then runs on one thread).
"""
import os
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _openmp_flags(compiler) -> list[str]:
    """Return the compiler's OpenMP flag if a tiny OpenMP program compiles and links, else []."""
    flag = "/openmp" if compiler.compiler_type == "msvc" else "-fopenmp"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp_check.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n")
        try:
            objs = compiler.compile([src], output_dir=tmp, extra_postargs=[flag])
            compiler.link_executable(objs, "omp_check", output_dir=tmp, extra_postargs=[flag])
        except Exception:  # any compile/link failure just means "no OpenMP"
            return []
    return [flag]


class BuildExtMaybeOpenMP(build_ext):
    """build_ext that adds OpenMP flags only where the compiler accepts them."""

    def build_extensions(self):
        flags = _openmp_flags(self.compiler)
        if not flags:
            print("eval_lib: compiler has no OpenMP support; building the single-threaded kernel")
        link_flags = [] if self.compiler.compiler_type == "msvc" else flags
        for ext in self.extensions:
            ext.extra_compile_args += flags
            ext.extra_link_args += link_flags
        super().build_extensions()


# -O3: the kernel's counting loops rely on auto-vectorisation (some Pythons build with -O2).
extension = Extension(
    "eval_lib._eval_cy",
    ["eval_lib/_eval_cy.pyx"],
    extra_compile_args=[] if os.name == "nt" else ["-O3"],
)

setup(ext_modules=cythonize([extension]), cmdclass={"build_ext": BuildExtMaybeOpenMP})
