"""The Triton APM kernels compile for real GPUs, checked on a machine without one.

The interpreter runs kernels as numpy code and accepts things the GPU compiler rejects
(reassigned constexprs, dot shapes below the hardware minimum, mismatched dot dtypes, ...).
Triton's NVIDIA backend lowers a kernel all the way to a cubin (with the bundled ptxas)
without a driver, so each case below is compiled ahead of time for sm_80 / sm_90 in a
subprocess where TRITON_INTERPRET is unset (kernels are built as compiled JIT functions there).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[1]


def _nvidia_backend_available() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    spec = importlib.util.find_spec("triton.backends.nvidia")
    if spec is None or not spec.submodule_search_locations:
        return False
    return (Path(list(spec.submodule_search_locations)[0]) / "bin" / "ptxas").exists()


if not _nvidia_backend_available():
    pytest.skip("triton's NVIDIA backend (with ptxas) is not installed", allow_module_level=True)

# Compiles the cases given as JSON on stdin; prints one JSON line per case.
_COMPILER = r"""
import json, pathlib, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import ap3d_kernels.backends.triton.kernels as at

assert not at.INTERPRETED
TYPES = {"fp32": ("fp32", "fp32", "fp32"), "fp16": ("fp16", "fp16", "fp32"),
         "bf16": ("bf16", "fp16", "fp32"), "fp64": ("fp64", "fp64", "fp64")}
VALUE_PTRS = {"X", "OUT", "DOUT", "DX"}

def kernel(name):
    k = getattr(at, name)
    while not isinstance(k, triton.runtime.JITFunction):
        k = k.fn  # unwrap @triton.autotune
    return k

def signature(k, dtype):
    x, qk, acc = TYPES[dtype]
    sig = {}
    for i, n in enumerate(k.arg_names):
        if i in k.constexprs:
            sig[n] = "constexpr"
        elif n == "scale":
            sig[n] = "fp32"
        elif n in VALUE_PTRS:
            sig[n] = "*" + x
        elif n == "Q":
            sig[n] = "*" + qk
        elif n == "PAIRS":
            sig[n] = "*i32"
        elif n.isupper() and n not in ("T", "HW", "C", "CK", "N_PAIRS"):
            sig[n] = "*" + acc
        else:
            sig[n] = "i32"
    return sig

def stack_bytes(cubin):
    # Per-thread stack frame (where register spills go), read with the bundled cuobjdump.
    tool = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"STACK:(\d+)", usage)
    return int(found.group(1)) if found else -1

for case in json.load(sys.stdin):
    k = kernel(case["kernel"])
    try:
        compiled = triton.compile(ASTSource(k, signature(k, case["dtype"]), case["constexprs"]),
                                  target=GPUTarget("cuda", case["arch"], 32),
                                  options={"num_warps": case["num_warps"], "num_stages": case["num_stages"]})
        print(json.dumps({"ok": True, "shared": compiled.metadata.shared, "has_cubin": "cubin" in compiled.asm,
                          "stack": stack_bytes(compiled.asm["cubin"])}))
    except Exception as exc:
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"[-3000:]}))
"""

PREC = {"fp32": "ieee", "fp16": "tf32", "bf16": "tf32", "fp64": "ieee"}


def fwd(dtype, contrastive=True, row_max=False, arch=90, blocks=(64, 64, 128), warps=4, stages=2, prec=None):
    m, n, c = blocks
    return dict(kernel="apm_fwd_kernel", dtype=dtype, arch=arch, num_warps=warps, num_stages=stages,
                constexprs=dict(TIME_DIM=3, CKP=16, CONTRASTIVE=contrastive, ROW_MAX=row_max,
                                PREC=prec or PREC[dtype], BLOCK_M=m, BLOCK_N=n, BLOCK_C=c))


def fill(dtype, contrastive=True, arch=90):
    return dict(kernel="apm_fwd_fill_kernel", dtype=dtype, arch=arch, num_warps=4, num_stages=2,
                constexprs=dict(TIME_DIM=3, CKP=16, CONTRASTIVE=contrastive, BLOCK_M=64, BLOCK_C=128))


def rowdot(dtype, contrastive=True, to_p=False, arch=90):
    return dict(kernel="apm_bwd_rowdot_kernel", dtype=dtype, arch=arch, num_warps=4, num_stages=2,
                constexprs=dict(TIME_DIM=5, CKP=16, CONTRASTIVE=contrastive, GATE_GRAD_TO_P=to_p, BLOCK_M=64,
                                BLOCK_C=128))


def dx(dtype, contrastive=True, arch=90, blocks=(64, 64, 128), warps=4, stages=2):
    m, n, c = blocks
    return dict(kernel="apm_bwd_dx_kernel", dtype=dtype, arch=arch, num_warps=warps, num_stages=stages,
                constexprs=dict(TIME_DIM=3, CKP=16, CONTRASTIVE=contrastive, PREC=PREC[dtype],
                                BLOCK_M=m, BLOCK_N=n, BLOCK_C=c))


def dkdq(which, dtype, contrastive=True, to_p=False, one_c=True, arch=90, blocks=(64, 64, 128), warps=4, stages=2, ckp=16):
    m, n, c = blocks
    return dict(kernel=f"apm_bwd_{which}_kernel", dtype=dtype, arch=arch, num_warps=warps, num_stages=stages,
                constexprs=dict(TIME_DIM=3, CKP=ckp, CONTRASTIVE=contrastive, GATE_GRAD_TO_P=to_p,
                                PREC=PREC[dtype], ONE_C=one_c, BLOCK_M=m, BLOCK_N=n, BLOCK_C=c,
                                **({"WITH_DX": one_c} if which == "dk" else {})))


def compile_cases(cases):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    proc = subprocess.run([sys.executable, "-c", _COMPILER], input=json.dumps(cases), env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(cases), proc.stderr[-3000:]
    failures = [f"{c['kernel']} {c['dtype']} sm_{c['arch']} {c['constexprs']}: {r['error']}"
                for c, r in zip(cases, results) if not r["ok"]]
    assert not failures, "\n\n".join(failures)
    assert all(r["has_cubin"] for r in results)
    return results


def test_every_kernel_compiles_to_a_cubin_for_hopper_in_16_bit_and_fp32():
    """One case per kernel, covering bf16, fp16 and IEEE fp32 dots and the flags' branches."""
    compile_cases([
        fwd("bf16"),
        fill("bf16"),
        rowdot("bf16", to_p=True),
        dx("fp16"),
        dkdq("dk", "bf16", to_p=True, one_c=False),
        dkdq("dq", "fp32", to_p=True, one_c=True),
    ])


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "fp64"])
@pytest.mark.parametrize("arch", [80, 90], ids=["ampere", "hopper"])
def test_every_kernel_and_branch_compiles(arch, dtype):
    cases = [fwd(dtype, contrastive, row_max, arch=arch) for contrastive, row_max in ((True, False), (True, True), (False, False))]
    if dtype == "fp32":
        cases.append(fwd("fp32", arch=arch, prec="tf32"))
    cases += [rowdot(dtype, contrastive, to_p, arch=arch) for contrastive, to_p in ((True, False), (True, True), (False, False))]
    cases += [fill(dtype, contrastive, arch=arch) for contrastive in (True, False)]
    cases += [dx(dtype, contrastive, arch=arch) for contrastive in (True, False)]
    for contrastive, to_p in ((True, False), (True, True), (False, False)):
        for one_c in (True, False):
            cases += [dkdq(which, dtype, contrastive, to_p, one_c, arch=arch) for which in ("dk", "dq")]
    compile_cases(cases)


@pytest.mark.slow
@pytest.mark.parametrize("arch, smem_limit", [(80, 166912), (90, 232448)])  # bytes per block
def test_every_autotune_config_compiles_and_fits_shared_memory(arch, smem_limit):
    from ap3d_kernels.backends.triton.configs import GPU_CONFIG_CHOICES

    cases = [fwd("bf16", blocks=(m, n, 128), warps=w, stages=s, arch=arch) for m, n, w, s in GPU_CONFIG_CHOICES["fwd"]]
    for m, n, w, s in GPU_CONFIG_CHOICES["bwd_kv"]:
        cases.append(dx("bf16", blocks=(m, n, 128), warps=w, stages=s, arch=arch))
        cases.append(dkdq("dk", "bf16", blocks=(m, n, 128), warps=w, stages=s, arch=arch))
    for m, n, w, s in GPU_CONFIG_CHOICES["bwd_q"]:
        cases.append(dkdq("dq", "bf16", blocks=(m, n, 128), warps=w, stages=s, arch=arch))
    results = compile_cases(cases)
    too_big = [(c["kernel"], c["constexprs"], r["shared"]) for c, r in zip(cases, results) if r["shared"] > smem_limit]
    assert not too_big, too_big
    if arch == 90:
        # Each kernel must have at least one bf16 config the autotuner can pick that does not
        # spill registers beyond a few bytes (hundreds showed up for 4-warp 64 x 64 tiles with
        # 128 channels). How much spills depends on the Triton version: none with 3.9, 40 bytes
        # in the dk kernel's best config with the 3.6 of the H100 image this was run on.
        best = {}
        for c, r in zip(cases, results):
            best[c["kernel"]] = min(best.get(c["kernel"], 1 << 30), r["stack"])
        assert all(v <= 64 for v in best.values()), best
