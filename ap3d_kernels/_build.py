"""Where the fused CPU kernels come from: the prebuilt extension, or a build at first use.

Two ways to install, both with the torch already in the environment:

* ``pip install --no-build-isolation -e .`` (``scripts/install.sh``): the build sees the installed
  torch and compiles ``ap3d_kernels._C`` during the install (the prebuilt path).
* ``pip install -e .`` (pip's default build isolation): the build runs in a fresh environment
  without torch, so ``setup.py`` installs the package without the extension. The first use then
  compiles ``csrc/`` with ``torch.utils.cpp_extension.load`` against the torch of the running
  process (a message says so; 1-2 minutes on two cores), into a cache directory keyed by the
  torch version, the Python version and a hash of the sources and flags. Later processes load
  the cached library at once; another torch version gets its own build.

:func:`load_or_build` is what the CPU backend's loader calls. This module must not import torch
at module level: ``setup.py`` reads the compiler flags from it in a build environment that may
have no torch.
"""
from __future__ import annotations

import glob
import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Optional

__all__ = ["BuildStatus", "load_or_build", "csrc_dir", "cache_dir", "CXX_FLAGS", "LINK_FLAGS", "CACHE_ENV",
           "NO_BUILD_ENV", "JIT_NAME", "NO_TORCH_AT_BUILD"]

# Baseline ISA on purpose: the hot loops carry their own AVX2/AVX-512 clones (csrc/apm_cpu_math.h),
# so one build runs on every x86-64 CPU. No errno / FP-trap semantics lets the exp loops vectorise.
CXX_FLAGS = ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
LINK_FLAGS = ["-fopenmp"]
CACHE_ENV = "AP3D_KERNELS_CACHE"  # where first-use builds go [default: ~/.cache/ap3d-kernels/ops]
NO_BUILD_ENV = "AP3D_KERNELS_NO_BUILD"  # "1": never compile at first use (fall back to the reference)
JIT_NAME = "ap3d_kernels_cpu_ops"
PREBUILT = "ap3d_kernels._C"

# printed by setup.py when the build environment has no torch (pip's default build isolation)
NO_TORCH_AT_BUILD = (
    "ap3d-kernels: torch is not importable in this build environment (pip builds in an isolated "
    "environment by default, which does not see the torch you installed). Installing without the "
    "prebuilt C++ extension: the fused CPU kernels will be compiled on first use against the torch "
    "of the process that uses them (a minute or more, once per torch version, cached under "
    f"~/.cache/ap3d-kernels/ops or ${CACHE_ENV}). To compile them now instead: "
    "pip install --no-build-isolation -e ."
)


@dataclass(frozen=True)
class BuildStatus:
    """How the kernels were obtained: ``source`` is "prebuilt", "cached" or "compiled"."""

    source: str
    path: str
    seconds: float

    def __str__(self) -> str:
        if self.source == "prebuilt":
            return f"prebuilt extension {self.path}"
        verb = "compiled now" if self.source == "compiled" else "loaded from the first-use build cache"
        return f"{verb}: {self.path} ({self.seconds:.1f}s)"


def csrc_dir() -> Optional[str]:
    """The C++ sources: ``csrc/`` of a source checkout (editable install), or ``_csrc/`` in the package."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(os.path.dirname(here), "csrc"), os.path.join(here, "_csrc")):
        if glob.glob(os.path.join(candidate, "*.cpp")):
            return candidate
    return None


def _sources(src: str) -> list[str]:
    return sorted(glob.glob(os.path.join(src, "*.cpp")))


def cache_dir(src: str, torch_version: str) -> str:
    """Build directory for these sources, flags, torch version and Python version."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(src, "*.cpp")) + glob.glob(os.path.join(src, "*.h"))):
        with open(path, "rb") as fh:
            digest.update(os.path.basename(path).encode() + b"\0" + fh.read())
    digest.update(" ".join(CXX_FLAGS + LINK_FLAGS).encode())
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ap3d-kernels", "ops")
    tag = f"torch-{torch_version}-py{sys.version_info.major}{sys.version_info.minor}-{digest.hexdigest()[:12]}"
    return os.path.join(base, tag.replace("+", "_"))


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; a virtualenv's ninja is not on it unless activated."""
    if shutil.which("ninja"):
        return
    candidates = [os.path.dirname(sys.executable)]
    try:
        import ninja  # the PyPI package (a dependency of ap3d-kernels)

        candidates.insert(0, ninja.BIN_DIR)
    except (ImportError, AttributeError):
        pass
    for directory in candidates:
        if os.path.isfile(os.path.join(directory, "ninja")):
            os.environ["PATH"] = directory + os.pathsep + os.environ.get("PATH", "")
            return


def _prebuilt_problem() -> Optional[str]:
    """Why the prebuilt extension cannot be used, or None. Only this installation's own build counts:
    another checkout's editable install can make ``ap3d_kernels._C`` resolve to its build, compiled
    from other sources."""
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    try:
        spec = importlib.util.find_spec(PREBUILT)
    except (ImportError, ValueError) as exc:
        return f"{PREBUILT} cannot be located ({exc})"
    if spec is None or not spec.origin:
        return f"{PREBUILT} is not built (plain `pip install -e .` skips it)"
    if os.path.realpath(os.path.dirname(spec.origin)) != here:
        return f"the {PREBUILT} found ({spec.origin}) belongs to another installation than {here}"
    return None


_outcome: Optional[BuildStatus | ImportError] = None  # once per process: a library loads only once


def load_or_build() -> BuildStatus:
    """Load the fused CPU operators (registering ``torch.ops.ap3d_cpu.*``); compile them first if needed.

    Order: the prebuilt ``ap3d_kernels._C``; else the first-use build for this torch (cached, or
    compiled now, with a message on stderr). Raises ``ImportError`` saying why neither worked and
    what to do. Later calls in the same process return (or raise) the first call's outcome: loading
    the operators twice would register them twice, which torch rejects.
    """
    global _outcome
    if _outcome is None:
        try:
            _outcome = _load_or_build()
        except ImportError as exc:
            _outcome = exc
    if isinstance(_outcome, ImportError):
        raise ImportError(str(_outcome))
    return _outcome


def _load_or_build() -> BuildStatus:
    prebuilt_error = _prebuilt_problem()
    if prebuilt_error is None:
        try:
            module = importlib.import_module(PREBUILT)
            return BuildStatus("prebuilt", getattr(module, "__file__", PREBUILT), 0.0)
        except ImportError as exc:  # e.g. built for another torch version
            prebuilt_error = f"{PREBUILT} does not load ({exc})"
    if os.environ.get(NO_BUILD_ENV) == "1":
        raise ImportError(f"{prebuilt_error}, and {NO_BUILD_ENV}=1 forbids compiling it at first use")
    src = csrc_dir()
    if src is None:
        raise ImportError(f"{prebuilt_error}, and the C++ sources (csrc/) are not in this installation")
    import torch
    from torch.utils import cpp_extension

    build_dir = cache_dir(src, torch.__version__)
    library = os.path.join(build_dir, f"{JIT_NAME}.so")
    cached = os.path.isfile(library)
    if not cached:
        print(f"ap3d_kernels: compiling the fused CPU kernels for torch {torch.__version__} (first use, once "
              f"per torch version; a minute or more) into {build_dir} ...", file=sys.stderr, flush=True)
    os.makedirs(build_dir, exist_ok=True)
    _ninja_on_path()
    t0 = time.time()
    try:
        cpp_extension.load(name=JIT_NAME, sources=_sources(src), extra_cflags=CXX_FLAGS, extra_ldflags=LINK_FLAGS,
                           extra_include_paths=[src], build_directory=build_dir, is_python_module=False,
                           verbose=False)
    except Exception as exc:  # noqa: BLE001 - compiler missing or failing, ninja missing, ...: all reported alike
        detail = str(exc).strip().splitlines() or [type(exc).__name__]
        raise ImportError(
            f"{prebuilt_error}, and compiling it at first use in {build_dir} failed ({' | '.join(detail[-3:])}); "
            "this needs a C++17 compiler with OpenMP (g++; set CXX to choose another) and ninja"
        ) from exc
    seconds = time.time() - t0
    if not cached:
        print(f"ap3d_kernels: fused CPU kernels compiled in {seconds:.0f}s", file=sys.stderr, flush=True)
    return BuildStatus("cached" if cached else "compiled", library, seconds)
