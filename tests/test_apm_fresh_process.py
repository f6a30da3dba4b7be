"""APM as a user meets it in a new Python process: compiled before any eager call, and counted by
``FlopCounterMode`` the first time.

Both depend on what is registered when, so each case runs in its own fresh interpreter (inside
the test session the library is long loaded and would hide the problem).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ap3d_kernels.backends import cpu as cpu_backend

pytestmark = pytest.mark.skipif(not cpu_backend.is_available()[0], reason="fused CPU kernels not built")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_fresh(script: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res.stdout


def test_a_freshly_built_block_compiles_with_fullgraph_before_any_eager_call():
    out = run_fresh(
        """
        import torch
        from ap3d_kernels.modules import APP3DC
        torch.manual_seed(0)
        block = APP3DC(32, 32)
        torch.nn.init.normal_(block.temporal_conv3d.weight, std=0.05)
        x = torch.randn(2, 32, 4, 6, 4, requires_grad=True)
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        y = compiled(x)                      # the first call of anything in this process
        (gx,) = torch.autograd.grad(y.square().sum(), x)
        (ref,) = torch.autograd.grad(block(x).square().sum(), x)
        assert torch.allclose(gx, ref, rtol=1e-4, atol=1e-6)
        print("COMPILED-OK")
        """
    )
    assert "COMPILED-OK" in out


def test_the_functional_op_compiles_with_fullgraph_in_a_fresh_process():
    out = run_fresh(
        """
        import torch, ap3d_kernels
        x = torch.randn(1, 32, 3, 5, 3)
        ws = [torch.randn(2, 32) * 0.2 for _ in range(3)] + [torch.randn(2)]
        compiled = torch.compile(lambda *a: ap3d_kernels.apm(*a), fullgraph=True, backend="aot_eager")
        assert torch.allclose(compiled(x, *ws), ap3d_kernels.apm_reference(x, *ws), rtol=1e-5, atol=1e-6)
        print("COMPILED-OK")
        """
    )
    assert "COMPILED-OK" in out


def test_flop_counter_counts_apm_the_first_time_a_model_is_counted():
    out = run_fresh(
        """
        import torch
        from torch.utils.flop_counter import FlopCounterMode
        from ap3d_kernels.modules import APP3DC, P3DC
        x = torch.randn(1, 64, 4, 16, 8)
        ap3d, p3d = APP3DC(64, 64), P3DC(64, 64)
        counts = []
        for model in (ap3d, ap3d, p3d):
            with FlopCounterMode(display=False) as counter:
                model(x)
            counts.append(counter.get_total_flops())
        print("COUNTS", *counts)
        """
    )
    first, second, p3d = map(int, out.split("COUNTS")[1].split())
    assert first == second > p3d  # APM's FLOPs are in the first count already
