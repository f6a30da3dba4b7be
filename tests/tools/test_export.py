"""Export of the inference network (`python -m reid.export`): torch.export with the fused APM kept as one
node per APM, and ONNX with APM in standard operators; both reloaded and compared with eager output,
at other batch sizes and clip lengths (both dynamic)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from reid.export import check_shapes, custom_op_nodes
from reid.inference import load_trained_model
from reid.models import apm_modules
from tool_helpers import REPO, env, run_module


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return os.path.join(tiny_run[0], "model_best.pth")


def eager(checkpoint, x):
    torch.set_num_threads(1)
    model = load_trained_model(checkpoint).model
    with torch.no_grad():
        return model(x).numpy(), len(apm_modules(model))


def test_check_shapes_cover_batch_one_and_another_clip_length():
    assert check_shapes(2, 4, 32, 16) == [(2, 3, 4, 32, 16), (1, 3, 4, 32, 16), (3, 3, 8, 32, 16)]


def test_torch_export_keeps_apm_as_one_node_and_reloads_in_a_fresh_process(checkpoint, tmp_path):
    out = tmp_path / "net.pt2"
    proc = run_module("reid.export", "--checkpoint", checkpoint, "--format", "export", "--out", out)
    assert "APM kept as custom-op nodes: ap3d_cpu::apm_fwd x2" in proc.stdout, proc.stdout
    assert proc.stdout.count(" ok\n") == 3 and "-> passed" in proc.stdout
    assert f"export: {out} ({os.path.getsize(out) / 2**20:.1f} MiB" in proc.stdout

    x = torch.randn(3, 3, 6, 32, 16, generator=torch.Generator().manual_seed(1))  # a shape not exported with
    torch.save(x, tmp_path / "x.pt")
    code = textwrap.dedent(f"""
        import numpy as np, torch
        from reid.export import custom_op_nodes, load_exported
        net = load_exported({str(out)!r})
        print("NODES", sum(custom_op_nodes(torch.export.load({str(out)!r}).graph).values()))
        np.save({str(tmp_path / "y.npy")!r}, net(torch.load({str(tmp_path / "x.pt")!r})).detach().numpy())
    """)
    fresh = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    expected, n_apm = eager(checkpoint, x)
    assert f"NODES {n_apm}" in fresh.stdout and n_apm == 2
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-5)


def test_onnx_uses_standard_operators_and_matches_eager_in_onnxruntime(checkpoint, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "net.onnx"
    proc = run_module("reid.export", "--checkpoint", checkpoint, "--format", "onnx", "--out", out)
    assert "standard operators only" in proc.stdout and "-> passed" in proc.stdout, proc.stdout
    model = onnx.load(str(out))
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "frames", 32, 16]

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for shape in ((1, 3, 1, 32, 16), (5, 3, 7, 32, 16)):  # one frame; odd batch and clip length
        x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
        expected, _ = eager(checkpoint, x)
        got = session.run(None, {"clips": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))


def test_custom_op_nodes_ignores_aten():
    graph = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)).graph
    assert custom_op_nodes(graph) == {}


def test_a_missing_checkpoint_is_named(tmp_path):
    proc = run_module("reid.export", "--checkpoint", tmp_path / "none.pth", "--format", "onnx", check=False)
    assert proc.returncode == 1 and "none.pth" in proc.stderr
