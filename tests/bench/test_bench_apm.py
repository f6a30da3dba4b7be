"""bench/bench_apm.py as a user runs it: a small CPU run writes its JSON and markdown, with the
machine facts every benchmark of the project records (bench/_common.py)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_small_cpu_run_writes_rows_and_machine_facts(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    env.pop("TRITON_INTERPRET", None)  # the suite's interpreter mode would add a Triton row at minutes per shape
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_apm.py"), "--batch", "1", "--dtypes",
                           "float32", "--no-flex", "--no-sweep", "--warmup", "0", "--repeats", "1", "--out-dir", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "apm_cpu.json").read_text())
    meta, rows = data["meta"], data["rows"]
    for key in ("cpu", "cpu_isa_flags", "threads", "torch", "commit", "load_avg_start", "load_avg_end", "gemm_gflops"):
        assert key in meta, key
    assert {r["impl"] for r in rows} >= {"reference", "sdpa", "fused-cpu"}
    assert all(r["fwd_ms"] > 0 and r["dtype"] == "float32" for r in rows)
    md = (out / "apm_cpu.md").read_text()
    assert meta["cpu"] in md and "load average" in md and "| float32 |" in md
