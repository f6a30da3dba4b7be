"""The CMake build (CMakeLists.txt) produces a working operator library, as the setup.py one does.

CI runs only the test command, so this test is the "builds both ways" check: it configures and
builds the library in a temporary directory with ``find_package(Torch)`` from the installed torch,
then, in a fresh interpreter that never imports ``ap3d_kernels._C``, loads it through
``AP3D_KERNELS_LIBRARY`` (``torch.ops.load_library``) and checks forward and backward against the
reference. It compiles three C++ files, so it is the slowest test of the kernel suite.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from ap3d_kernels import apm, apm_reference
    from ap3d_kernels.backends import cpu as apm_cpu
    ok, reason = apm_cpu.is_available()
    assert ok, reason
    assert "ap3d_kernels._C" not in sys.modules, "the setup.py extension was loaded instead of the CMake one"
    gen = torch.Generator().manual_seed(0)
    def leaf(*s):
        return (torch.randn(*s, generator=gen, dtype=torch.float64) * 0.3).requires_grad_()
    x, g, th, ph, att = leaf(2, 32, 3, 5, 3), leaf(2, 32), leaf(2, 32), leaf(2, 32), leaf(2)
    kw = dict(scale=4.0, time_dim=3, contrastive=True, detach_gate_inputs=False)
    out = apm(x, g, th, ph, att, backend="cpu", **kw)
    ref = apm_reference(x, g, th, ph, att, **kw)
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(out, [x, g, th, ph, att], go)
    ref_grads = torch.autograd.grad(ref, [x, g, th, ph, att], go)
    assert torch.allclose(out, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)
    print("CMAKE-LIBRARY-OK", apm_cpu.isa())
    """
)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_build_loads_with_torch_ops_and_matches_reference(tmp_path):
    build = tmp_path / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = subprocess.run(
        ["cmake", "-S", REPO, "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
         f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
        capture_output=True, text=True, timeout=300,
    )
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    compile_ = subprocess.run(["cmake", "--build", str(build), "--parallel", "2"], capture_output=True, text=True,
                              timeout=600)
    assert compile_.returncode == 0, compile_.stdout[-5000:] + compile_.stderr[-3000:]
    library = build / "libap3d_kernels.so"
    assert library.is_file(), sorted(p.name for p in build.iterdir())

    env = dict(os.environ, AP3D_KERNELS_LIBRARY=str(library))
    check = subprocess.run([sys.executable, "-c", CHECK_SCRIPT], env=env, cwd=str(tmp_path), capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 0 and "CMAKE-LIBRARY-OK" in check.stdout, check.stdout[-2000:] + check.stderr[-4000:]
