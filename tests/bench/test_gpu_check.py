"""scripts/gpu_check.sh as the next GPU session will run it, tried through its --cpu-smoke mode:
steps chosen by GPU_CHECK_STEPS, a time budget that skips what no longer fits, a summary, and
no more result files than the device tool brings back (eight)."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_check.sh")


def run_check(out, **env_extra):
    env = {**os.environ, **env_extra}
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run(["bash", SCRIPT, "--cpu-smoke", str(out)], env=env, capture_output=True, text=True,
                          timeout=600)


def files_left(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)


def test_chosen_steps_run_and_leave_a_summary_and_an_archive(tmp_path):
    proc = run_check(tmp_path / "out", GPU_CHECK_STEPS="machine,profile")
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    for line in ("PASS  machine", "PASS  profile_bf16", "PASS  profile_fp32", "PASS  profile_model", "## profile_fp32",
                 "## AP3D vs C2D step, op by op"):
        assert line in summary, line
    steps = [line.split()[1] for line in summary.splitlines() if line.startswith(("PASS", "FAIL", "SKIP"))]
    assert steps == ["machine", "profile_bf16", "profile_fp32", "profile_model"]  # only the chosen steps, in order
    assert files_left(tmp_path / "out") == ["logs.tar.gz", "summary.txt"]


def test_a_spent_budget_skips_the_remaining_steps(tmp_path):
    proc = run_check(tmp_path / "out", GPU_CHECK_STEPS="machine,profile", GPU_CHECK_BUDGET="20")
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "SKIP  machine (the 20-s budget is spent)" in summary
    assert "SKIP  profile_bf16" in summary and "PASS" not in summary
    assert len(files_left(tmp_path / "out")) <= 8
