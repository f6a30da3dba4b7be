"""bench/bench_apm.py as a user runs it: a small CPU run writes its JSON and markdown, with the
machine facts every benchmark of the project records (bench/_common.py)."""
import json
import os
import re
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
    for key in ("cpu", "cpu_generation", "cpu_isa_flags", "threads", "torch", "commit", "load_avg_start",
                "load_avg_end", "gemm_gflops"):
        assert key in meta, key
    # one model name ("AMD EPYC") covers generations that time differently: x86 records which one
    if "cpu family" in open("/proc/cpuinfo").read():
        assert re.fullmatch(r"family \d+ model \d+", meta["cpu_generation"]), meta["cpu_generation"]
    assert {r["impl"] for r in rows} >= {"reference", "sdpa", "fused-cpu"}
    assert all(r["fwd_ms"] > 0 and r["dtype"] == "float32" for r in rows)
    md = (out / "apm_cpu.md").read_text()
    assert meta["cpu"] in md and meta["cpu_generation"] in md and "load average" in md and "| float32 |" in md


def test_a_failing_implementation_is_recorded_and_the_other_rows_kept(tmp_path, monkeypatch):
    """One implementation that raises (as FlexAttention did at Ck = 8 on CUDA) must not cost the
    rows of the others: it is printed, kept under "failures", and the run goes on."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "bench"))
    import bench_apm

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this shape")

    def implementations(device, flex=True):
        # Not the Triton interpreter's row (minutes per shape): the suite runs with TRITON_INTERPRET=1.
        kept = {name: fn for name, fn in real(device, flex=False).items() if "triton" not in name}
        return {**kept, "broken": broken}

    real = bench_apm.implementations
    monkeypatch.setattr(bench_apm, "implementations", implementations)
    out = tmp_path / "results"
    bench_apm.main(["--batch", "1", "--dtypes", "float32", "--no-flex", "--no-sweep", "--warmup", "0",
                    "--repeats", "1", "--out-dir", str(out)])
    data = json.loads((out / "apm_cpu.json").read_text())
    assert {f["impl"] for f in data["failures"]} == {"broken"}
    assert all("no kernel for this shape" in f["error"] for f in data["failures"])
    assert {r["stage"] for r in data["rows"] if r["impl"] == "reference"} == {"stage2", "stage3"}
    assert "broken" not in {r["impl"] for r in data["rows"]}


def test_profile_apm_reports_wall_and_kernel_time_of_one_call():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "profile_apm.py"), "--backend", "reference",
                           "--batch", "1", "--stage", "stage3", "--steps", "1", "--top", "3"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for part in ("## forward:", "## forward+backward:", "kernels:", "ms per call"):
        assert part in proc.stdout, part
