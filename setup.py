"""Build of ap3d-kernels (metadata and dependencies are in pyproject.toml).

Two install commands, both using the torch already installed (torch is deliberately not a
dependency: pip would pull the multi-GB CUDA build onto CPU machines or replace a user's build):

* ``pip install --no-build-isolation -e .`` (scripts/install.sh): the build sees torch and
  compiles the C++ extension ``ap3d_kernels._C`` now.
* ``pip install -e .``: pip builds in an isolated environment without torch; the package is then
  installed without the extension, and ``ap3d_kernels._build`` compiles the kernels on first use
  against the torch of the process (cached per torch version).
"""
import glob
import importlib.util
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_build_module():
    # ap3d_kernels/_build.py by path: importing the package would import torch
    spec = importlib.util.spec_from_file_location("_ap3d_build", os.path.join(ROOT, "ap3d_kernels", "_build.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_build = _load_build_module()


class BuildPyWithSources(build_py):
    """A non-editable install also ships csrc/ as ap3d_kernels/_csrc, for the first-use build."""

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            target = os.path.join(self.build_lib, "ap3d_kernels", "_csrc")
            os.makedirs(target, exist_ok=True)
            for path in glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "*.h")):
                shutil.copy2(path, target)


cmdclass = {"build_py": BuildPyWithSources}
ext_modules = []
try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:  # pip's build isolation (or no torch at all): no extension now, first-use build later
    print(_build.NO_TORCH_AT_BUILD)
else:
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if sources and os.environ.get("AP3D_SKIP_EXTENSION", "0") != "1":
        ext_modules.append(
            CppExtension(
                name="ap3d_kernels._C",
                sources=sources,
                include_dirs=[os.path.join(ROOT, "csrc")],
                extra_compile_args={"cxx": [*_build.CXX_FLAGS, "-DAP3D_PYTHON_MODULE"]},
                extra_link_args=list(_build.LINK_FLAGS),
            )
        )
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
