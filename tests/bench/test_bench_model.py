"""bench/bench_model.py as a user runs it: a --quick smoke run writes its JSON and markdown."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "bench", "bench_model.py")


def run_bench(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_quick_run_writes_json_and_markdown_with_ratios_and_data_wait(tmp_path):
    out = tmp_path / "results"
    proc = run_bench("--quick", "--archs", "C2D,AP3D", "--precisions", "fp32", "--layouts", "contiguous",
                     "--threads", "1", "--synthetic-root", str(tmp_path / "synthetic"), "--out-dir", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "model_cpu.json").read_text())
    meta, rows = data["meta"], data["rows"]
    for key in ("cpu", "cpu_isa_flags", "threads", "torch", "load_avg_start", "load_avg_end", "commit", "auto_policy"):
        assert key in meta, key
    assert meta["threads"] == 1
    assert {r["arch"] for r in rows} == {"C2D", "AP3D"}
    for r in rows:
        assert (r["shape"], r["precision"], r["layout"], r["compile"]) == ("quick", "fp32", "contiguous", False)
        assert r["train_ms"] > 0 and r["train_median_ms"] >= r["train_ms"]
        assert r["infer_frames_per_s"] == pytest.approx(r["infer_clips_per_s"] * r["infer_len"])
    ap3d = next(r for r in rows if r["arch"] == "AP3D")
    assert 0 <= ap3d["data_wait_share"] < 1 and ap3d["loader_step_ms"] > 0  # measured on the real loader
    md = (out / "model_cpu.md").read_text()
    c2d = next(r for r in rows if r["arch"] == "C2D")
    row = next(line for line in md.splitlines() if line.startswith("| quick | fp32"))
    assert f"| {ap3d['train_ms'] / c2d['train_ms']:.3f} |" in row  # the AP3D/C2D ratio per setting
    assert "load average" in md and "Training step" in md and "Inference" in md
    assert "written:" in proc.stdout


def load_bench_module():
    spec = importlib.util.spec_from_file_location("bench_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_model", module)  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("args,msg", [(["--precisions", "fp16"], "fp16 autocast is for CUDA"),
                                      (["--layouts", "nhwc"], "--layouts: got nhwc, expected a comma list of contiguous"),
                                      (["--archs", "C2D,I3D"], "--archs: got C2D,I3D")])
def test_bad_arguments_are_named(args, msg, capsys):
    with pytest.raises(SystemExit) as exc:
        load_bench_module().parse_args(args)
    assert exc.value.code == 2 and msg in capsys.readouterr().err
