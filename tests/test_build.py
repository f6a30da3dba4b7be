"""Installing with the torch a user already has: `pip install --no-build-isolation -e .` compiles the
extension during the install; plain `pip install -e .` (pip's isolated build cannot see torch)
installs without it and the kernels are compiled at first use, cached per torch version.

The fast cases run setup.py and the first-use loader in subprocesses; the slow case does what a
user does: a fresh virtualenv that sees the installed torch, plain `pip install -e .`, then an APM
call on the fused kernel (it compiles, one to a few minutes)."""
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# setup.py's setup() call, captured instead of run
CAPTURE_SETUP = textwrap.dedent("""
    import json, runpy, sys, setuptools
    if sys.argv[1] == "hide-torch":
        sys.modules["torch"] = None  # what pip's isolated build environment looks like
    captured = {}
    setuptools.setup = lambda **kw: captured.update(kw)
    sys.argv = ["setup.py", "--name"]
    runpy.run_path("setup.py", run_name="__main__")
    print(json.dumps({"ext_modules": [[e.name, e.extra_compile_args] for e in captured["ext_modules"]],
                      "cmdclass": sorted(captured["cmdclass"])}))
""")


def run_setup(mode):
    proc = subprocess.run([sys.executable, "-c", CAPTURE_SETUP, mode], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


def test_setup_without_visible_torch_installs_without_the_extension_and_says_so_truthfully():
    captured, out = run_setup("hide-torch")
    assert captured["ext_modules"] == [] and "build_py" in captured["cmdclass"]
    assert "torch is not importable in this build environment" in out
    assert "compiled on first use" in out and "pip install --no-build-isolation -e ." in out
    assert "must be installed first" not in out


def test_setup_with_torch_builds_the_extension_now():
    from ap3d_kernels import _build

    captured, _ = run_setup("with-torch")
    [(name, args)] = captured["ext_modules"]
    assert name == "ap3d_kernels._C" and args["cxx"] == [*_build.CXX_FLAGS, "-DAP3D_PYTHON_MODULE"]
    assert {"build_ext", "build_py"} <= set(captured["cmdclass"])


def test_cache_directory_is_keyed_by_torch_version_and_sources(tmp_path, monkeypatch):
    from ap3d_kernels import _build

    monkeypatch.setenv(_build.CACHE_ENV, str(tmp_path / "cache"))
    src = tmp_path / "csrc"
    src.mkdir()
    (src / "a.cpp").write_text("int a;")
    first = _build.cache_dir(str(src), "2.13.0+cpu")
    assert first.startswith(str(tmp_path / "cache")) and "torch-2.13.0_cpu-py" in first
    assert _build.cache_dir(str(src), "2.14.0") != first
    (src / "a.cpp").write_text("int b;")
    assert _build.cache_dir(str(src), "2.13.0+cpu") != first


def test_the_checkouts_own_prebuilt_extension_is_used():
    if not glob.glob(os.path.join(REPO, "ap3d_kernels", "_C*.so")):
        pytest.skip("the extension is not built in this checkout (pip install --no-build-isolation -e .)")
    code = ("from ap3d_kernels._build import load_or_build; s = load_or_build()\n"
            "assert load_or_build() is s  # once per process\nprint(s.source, s.path)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr
    source, path = proc.stdout.split()
    assert source == "prebuilt" and os.path.dirname(path) == os.path.join(REPO, "ap3d_kernels")


def copy_package(dest):
    """This package and its C++ sources, without any built extension (what plain pip install -e . leaves)."""
    shutil.copytree(os.path.join(REPO, "csrc"), dest / "csrc")
    shutil.copytree(os.path.join(REPO, "ap3d_kernels"), dest / "ap3d_kernels",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))


FIRST_USE = textwrap.dedent("""
    import warnings, torch, ap3d_kernels
    from ap3d_kernels.backends import cpu as apm_cpu
    print("CPU BACKEND", "cpu" in ap3d_kernels.available_backends("cpu"))
    print("REASON", apm_cpu.is_available()[1])
    x = torch.randn(1, 8, 3, 3, 2)
    g, th, ph = (torch.randn(4, 8) for _ in range(3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z = ap3d_kernels.apm(x, g, th, ph, torch.randn(4))  # backend="auto"
    print("WARNINGS", [str(w.message) for w in caught])
    print("SHAPE", tuple(z.shape))
""")


@pytest.mark.parametrize("why", ["compiler fails", "building forbidden"])
def test_without_a_prebuilt_extension_a_failed_first_use_build_says_why_and_falls_back(tmp_path, why):
    copy_package(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "AP3D_KERNELS_CACHE": str(tmp_path / "cache")}
    if why == "compiler fails":
        env["CXX"] = "false"  # a compiler that fails at once
    else:
        env["AP3D_KERNELS_NO_BUILD"] = "1"
    proc = subprocess.run([sys.executable, "-c", FIRST_USE], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "CPU BACKEND False" in out and "SHAPE (1, 8, 9, 3, 2)" in out
    # none in the copy; one another checkout's editable install maps in (as on a developer's machine) is not used
    assert "ap3d_kernels._C is not built" in out or "belongs to another installation than" in out
    if why == "compiler fails":
        assert "compiling the fused CPU kernels for torch" in proc.stderr  # the message while it compiles
        assert "compiling it at first use in" in out and "C++17 compiler" in out
    else:
        assert "AP3D_KERNELS_NO_BUILD=1 forbids compiling it at first use" in out
    assert "falls back to the pure-PyTorch reference" in out


VENV_CHECK = textwrap.dedent("""
    import sys, time, torch, ap3d_kernels
    from ap3d_kernels import _build
    t0 = time.time()
    status = _build.load_or_build()
    x = torch.randn(2, 16, 3, 4, 4)
    g, th, ph = (torch.randn(4, 16) for _ in range(3))
    w = torch.randn(4)
    z = ap3d_kernels.apm(x, g, th, ph, w, backend="cpu")  # the fused kernel, or an error
    err = (z - ap3d_kernels.apm_reference(x, g, th, ph, w)).abs().max().item()
    print("STATUS", status.source, ap3d_kernels.__file__, err, round(time.time() - t0, 1))
""")


def venv_with_system_torch(path):
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True, timeout=300)
    return str(path / "bin" / "python")


def user_run(python, cwd, cache):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AP3D_KERNELS_LIBRARY")}
    env.update(AP3D_KERNELS_CACHE=str(cache), PATH=os.path.dirname(python) + os.pathsep + env.get("PATH", ""))
    proc = subprocess.run([python, "-c", VENV_CHECK], cwd=str(cwd), capture_output=True, text=True, timeout=1200,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    source, module_file, err, _seconds = proc.stdout.split("STATUS")[1].split()
    return source, module_file, float(err), proc.stderr


@pytest.mark.slow
def test_plain_pip_install_e_in_a_fresh_virtualenv_compiles_at_first_use(tmp_path):
    checkout = tmp_path / "checkout"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        if os.path.isfile(os.path.join(REPO, rel)):
            os.makedirs(checkout / os.path.dirname(rel), exist_ok=True)
            shutil.copy2(os.path.join(REPO, rel), checkout / rel)
    python = venv_with_system_torch(tmp_path / "venv")
    install = subprocess.run([python, "-m", "pip", "install", "-e", str(checkout)], capture_output=True, text=True,
                             timeout=1200)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert not glob.glob(str(checkout / "ap3d_kernels" / "_C*.so"))  # the isolated build could not compile it

    cache = tmp_path / "cache"
    source, module_file, err, stderr = user_run(python, tmp_path, cache)
    assert module_file == str(checkout / "ap3d_kernels" / "__init__.py")
    assert source == "compiled" and err < 1e-4
    assert "compiling the fused CPU kernels for torch" in stderr and "compiled in" in stderr
    source, _, err, stderr = user_run(python, tmp_path, cache)  # a new process: the cached build
    assert source == "cached" and err < 1e-4 and "compiling" not in stderr

    # a regular (non-editable) install ships the sources in the package; same sources -> same cache entry
    python2 = venv_with_system_torch(tmp_path / "venv2")
    install = subprocess.run([python2, "-m", "pip", "install", str(checkout)], capture_output=True, text=True,
                             timeout=1200)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    source, module_file, err, _ = user_run(python2, tmp_path, cache)
    assert "venv2" in module_file and source == "cached" and err < 1e-4
