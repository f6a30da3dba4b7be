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


def fake_row(precision, layout, arch, train_ms, run_facts=None, **extra):
    return {"shape": "default", "backbone": "resnet18", "T": 4, "H": 128, "W": 64, "P": 8, "K": 4, "batch": 32,
            "infer_clips": 8, "infer_len": 32, "num_classes": 150, "precision": precision, "layout": layout,
            "compile": False, "arch": arch, "auto": False, "train_ms": train_ms, "train_median_ms": train_ms,
            "train_clips_per_s": 32e3 / train_ms, "infer_ms": 100.0, "infer_median_ms": 100.0,
            "infer_clips_per_s": 80.0, "infer_frames_per_s": 2560.0, **extra}


def test_update_merges_a_partial_run_into_the_previous_results(tmp_path):
    bm = load_bench_module()
    facts = {"date_utc": "d", "commit": "c", "device": "cpu", "cpu": "CPU", "cpu_isa_flags": ["avx2"], "cpu_count": 2,
             "threads": 2, "torch": "t", "load_avg_start": [0.5, 0, 0], "load_avg_end": [0.7, 0, 0],
             "command": "first", "timing": "fastest of 3"}
    first = [fake_row("fp32", "contiguous", "C2D", 2000.0), fake_row("fp32", "contiguous", "AP3D", 2100.0),
             fake_row("bf16", "contiguous", "C2D", 1500.0), fake_row("bf16", "contiguous", "AP3D", 1600.0)]
    stem = str(tmp_path / "model_cpu")
    bm.write_results(stem, {"meta": facts, "runs": [facts], "rows": first, "profile": []}, "")
    second = [fake_row("bf16", "contiguous", "C2D", 1400.0), fake_row("bf16", "contiguous", "AP3D", 1428.0),
              {"shape": "default", "precision": "fp32", "layout": "contiguous", "compile": False, "skipped": "x"}]
    runs, rows, _ = bm.merge_previous(stem, dict(facts, command="second"), second, [])
    assert [r["command"] for r in runs] == ["first", "second"]
    by = {(r["precision"], r["arch"]): r for r in rows if "arch" in r}
    assert by[("fp32", "C2D")]["train_ms"] == 2000.0  # kept: not measured again (a skip never hides a figure)
    assert by[("bf16", "AP3D")]["train_ms"] == 1428.0 and by[("bf16", "AP3D")]["run"] == 1  # replaced
    assert not any("skipped" in r for r in rows)
    md = bm.render_markdown(runs, rows, [])
    assert "Run 2 (default bf16 contiguous compile off)" in md
    bf16_row = next(line for line in md.splitlines() if line.startswith("| default | bf16"))
    assert "| 1.020 |" in bf16_row and "| 1.47x |" in bf16_row  # AP3D/C2D 1428/1400; speed-up 2100/1428


def test_the_ratio_is_shown_without_the_fp32_contiguous_baseline_row():
    bm = load_bench_module()
    facts = {"date_utc": "d", "commit": "c", "device": "cpu", "cpu": "CPU", "cpu_isa_flags": ["avx2"], "cpu_count": 2,
             "threads": 2, "torch": "t", "load_avg_start": [0.5, 0, 0], "command": "only bf16", "timing": "fastest of 3"}
    rows = [fake_row("bf16", "channels_last_3d", "C2D", 600.0), fake_row("bf16", "channels_last_3d", "AP3D", 660.0)]
    line = next(x for x in bm.render_markdown([facts], rows, []).splitlines() if x.startswith("| default | bf16"))
    assert "| 1.100 |" in line and line.endswith("| - | - |")  # no speed-up without the baseline, no data wait
