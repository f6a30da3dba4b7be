"""Precision/layout policy: what --amp auto / --memory-format auto choose and why, that every
supported setting trains, that evaluation runs under inference mode with the policy, and that
the CLIs state the choice in the run header."""
import functools
import os
import subprocess
import sys

import pytest
import torch

from reid.engine.config import Config, ConfigError, build_parser, load_config
from reid.engine.evaluator import extract_features
from reid.engine.precision import Policy, cpu_flags, native_bf16, resolve_policy
from reid.losses import ReIDLoss
from reid.models import build_model

CPU = torch.device("cpu")
AVX512_BF16 = frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"})
AVX2_ONLY = frozenset({"fpu", "avx2", "fma"})
needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


# --- what auto chooses -------------------------------------------------------------------------
@needs_onednn
@pytest.mark.parametrize("flags", [AVX512_BF16, frozenset({"avx512f", "amx_bf16", "amx_tile"}),
                                   frozenset({"fp", "asimd", "bf16"})], ids=["avx512_bf16", "amx", "arm-bf16"])
def test_auto_picks_bf16_and_channels_last_on_a_cpu_with_native_bf16(flags):
    p = resolve_policy("auto", "auto", CPU, flags=flags)
    assert (p.amp, p.memory_format) == ("bf16", "channels_last_3d")
    assert p.dtype is torch.bfloat16 and p.torch_memory_format is torch.channels_last_3d
    assert p.amp_reason.startswith("auto: this CPU has native bf16 (")
    assert any(f in p.amp_reason for f in flags)


def test_auto_keeps_fp32_where_bf16_would_be_emulated():
    p = resolve_policy("auto", "auto", CPU, flags=AVX2_ONLY)
    assert p.amp == "none" and p.dtype is None
    assert "no native bf16" in p.amp_reason
    assert p.describe().startswith("precision fp32 (auto: this CPU has no native bf16")


def test_explicit_choices_are_honoured_and_named_as_flags():
    p = resolve_policy("none", "contiguous", CPU, flags=AVX512_BF16)
    assert p == Policy("none", "contiguous", "--amp none", "--memory-format contiguous")
    assert p.describe() == "precision fp32 (--amp none) | layout contiguous (--memory-format contiguous)"
    assert p.short() == "fp32, contiguous"


def test_forced_bf16_without_hardware_support_runs_but_says_it_is_emulated():
    p = resolve_policy("bf16", "auto", CPU, flags=AVX2_ONLY)
    assert p.amp == "bf16" and "emulated" in p.amp_reason


def test_fp16_on_cpu_is_refused_naming_the_option():
    with pytest.raises(ValueError, match="amp: got 'fp16', which needs a CUDA device"):
        resolve_policy("fp16", "auto", CPU)


@pytest.mark.parametrize("amp,fmt,msg", [("fp32", "auto", "amp: got 'fp32', expected one of auto, none"),
                                         ("auto", "nhwc", "memory_format: got 'nhwc', expected one of auto")])
def test_unknown_values_are_named(amp, fmt, msg):
    with pytest.raises(ValueError, match=msg):
        resolve_policy(amp, fmt, CPU)


def test_config_flags_default_to_auto_and_reject_unknown_layouts():
    parser = build_parser("t")
    cfg = load_config(parser.parse_args([]))
    assert (cfg.amp, cfg.memory_format) == ("auto", "auto")
    cfg = load_config(parser.parse_args(["--amp", "bf16", "--memory-format", "channels_last_3d"]))
    assert (cfg.amp, cfg.memory_format) == ("bf16", "channels_last_3d")
    with pytest.raises(ConfigError, match="memory_format: got 'channels_last'"):
        load_config(parser.parse_args(["--memory-format", "channels_last"]))


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(str(x86)) == {"fpu", "avx2", "avx512_bf16"}
    assert native_bf16(CPU, cpu_flags(str(arm)))[0] == torch.backends.mkldnn.is_available()
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_prepare_batch_gives_the_policys_layout_whatever_the_loader_made():
    cl = torch.randn(2, 3, 4, 8, 6).contiguous(memory_format=torch.channels_last_3d)
    nchw = cl.contiguous()
    last = resolve_policy("none", "channels_last_3d", CPU)
    plain = resolve_policy("none", "contiguous", CPU)
    assert last.prepare_batch(cl) is cl  # the loaders' channels-last batches: no copy
    assert last.prepare_batch(nchw).is_contiguous(memory_format=torch.channels_last_3d)
    assert plain.prepare_batch(cl).is_contiguous() and torch.equal(plain.prepare_batch(cl), cl)
    assert plain.prepare_batch(nchw) is nchw


# --- every supported setting trains --------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def train_steps(amp, memory_format, steps=2):
    """Adam steps of AP3D-ResNet-18 on 4 random 4x32x16 clips; returns (losses, model, first logits)."""
    policy = resolve_policy(amp, memory_format, CPU)
    torch.manual_seed(0)
    model = policy.prepare_model(build_model("ap3d_resnet18", num_classes=4))
    criterion = ReIDLoss(4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    clips = policy.prepare_batch(torch.randn(4, 3, 4, 32, 16, generator=torch.Generator().manual_seed(1)))
    pids = torch.tensor([0, 0, 1, 1])
    losses, first = [], None
    for _ in range(steps):
        with policy.autocast(CPU):
            logits, feats = model(clips)
        loss, _ = criterion(logits.float(), feats.float(), pids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        first = logits.detach().float() if first is None else first
    return losses, model, first


@pytest.mark.parametrize("amp", ["none", "bf16"])
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last_3d"])
def test_a_train_step_runs_with_finite_losses_under_each_setting(amp, memory_format):
    losses, model, _ = train_steps(amp, memory_format)
    assert all(torch.isfinite(torch.tensor(losses)))
    conv = model.conv1.weight  # parameters stay fp32 under autocast; the layout is the requested one
    assert conv.dtype is torch.float32 and conv.grad is not None and torch.isfinite(conv.grad).all()
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) == (memory_format == "channels_last_3d")


def test_channels_last_computes_what_contiguous_computes_in_fp32():
    reference = train_steps("none", "contiguous")
    channels_last = train_steps("none", "channels_last_3d")
    assert channels_last[0][0] == pytest.approx(reference[0][0], rel=1e-4)
    torch.testing.assert_close(channels_last[2], reference[2], rtol=1e-3, atol=1e-3)


# --- evaluation ------------------------------------------------------------------------------------
class RecordsHowItIsCalled(torch.nn.Module):
    """An eval-mode model ([n, 3, L, H, W] -> [n, L, 2]) that records the context of each call."""

    feature_dim = 2

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 2, 1)
        self.calls = []

    def forward(self, x):
        self.calls.append((torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu"),
                           torch.get_autocast_dtype("cpu"), x.is_contiguous(memory_format=torch.channels_last_3d)))
        return self.conv(x).float().mean((3, 4)).transpose(1, 2)


@pytest.mark.parametrize("amp,memory_format", [("bf16", "channels_last_3d"), ("none", "contiguous")])
def test_features_are_extracted_under_inference_mode_with_the_policy(tiny_root, tiny_data, amp, memory_format):
    from reid.data import build_dataset

    ds = build_dataset("synthetic", root=tiny_root, verbose=False, **tiny_data)
    cfg = Config(height=32, width=16, test_batch_size=4, num_workers=0, amp=amp, memory_format=memory_format)
    model = RecordsHowItIsCalled()
    feats = extract_features(model, ds.query, cfg, CPU, progress=False)
    assert feats.shape == (len(ds.query), 2) and not feats.is_inference()
    bf16 = amp == "bf16"
    assert set(model.calls) == {(True, bf16, torch.bfloat16 if bf16 else torch.get_autocast_dtype("cpu"),
                                 memory_format == "channels_last_3d")}


# --- the run header, as a user sees it -------------------------------------------------------------
def run_cli(module, args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_train_and_test_state_the_chosen_setting_in_the_run_header(tiny_root, tiny_data, tmp_path, capsys):
    data = ["--dataset", "synthetic", "--root", tiny_root, "--height", "32", "--width", "16", "--stride", "2",
            "--num-identities", "4", "--num-instances", "2", "--num-workers", "0", "--threads", "1",
            "--test-batch-size", "4"]
    for key, value in tiny_data.items():
        data += ["--dataset-option", f"{key}={value}"]
    out = tmp_path / "run"
    train_out = run_cli("reid.train", [*data, "--epochs", "1", "--iters-per-epoch", "1", "--output-dir", str(out)],
                        tmp_path)
    auto = resolve_policy("auto", "auto", CPU)
    assert auto.describe() in train_out  # whatever this machine supports, the header says it and why
    assert f"frames/s, {auto.short()})" in train_out and "data wait" in train_out
    assert "| loader in-process (--num-workers 0) | malloc " in train_out
    assert "| malloc reuse (auto: " in train_out or "| malloc system (auto: " in train_out

    from reid import test as reid_test  # in process: the subprocess above already covers the CLI start-up

    assert reid_test.main(["--checkpoint", str(out / "checkpoint_last.pth"), "--num-workers", "0",
                           "--amp", "none", "--memory-format", "contiguous", "--malloc", "system"]) == 0
    test_out = capsys.readouterr().out
    assert ("precision fp32 (--amp none) | layout contiguous (--memory-format contiguous) | loader in-process "
            "(--num-workers 0) | malloc system (--malloc system: the C library's defaults)") in test_out
    assert "frames/s, fp32, contiguous)" in test_out
