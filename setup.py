"""Build: ``pip install --no-build-isolation -e .`` (see scripts/install.sh).

torch is deliberately NOT in install_requires: pip would otherwise pull the multi-GB CUDA build
onto CPU machines, or replace the CUDA build a GPU user installed. Install torch first.
"""
import glob
import os

from setuptools import find_packages, setup

try:
    import torch  # noqa: F401
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError as exc:  # pragma: no cover - exercised only on a machine without torch
    raise SystemExit(
        "ap3d-kernels builds a PyTorch C++ extension, so torch must be installed first:\n"
        "  CPU:  pip install torch==2.13.0\n"
        "  GPU:  install the CUDA build of torch for your driver (see pytorch.org)\n"
        "then:  pip install --no-build-isolation -e .\n"
        f"(import error: {exc})"
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))

ext_modules = []
if sources and os.environ.get("AP3D_SKIP_EXTENSION", "0") != "1":
    ext_modules.append(
        CppExtension(
            name="ap3d_kernels._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            # Baseline ISA on purpose: the hot loops carry their own AVX2/AVX-512 clones
            # (csrc/apm_cpu_math.h), so one build runs on every x86-64 CPU.
            extra_compile_args={"cxx": ["-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-DAP3D_PYTHON_MODULE"]},
            extra_link_args=["-fopenmp"],
        )
    )

setup(
    name="ap3d-kernels",
    version="0.1.0",
    description="Appearance-Preserving 3D Convolution: fused APM kernels (C++/Triton) and a video ReID system",
    packages=find_packages(include=["ap3d_kernels", "ap3d_kernels.*", "reid", "reid.*"]),
    python_requires=">=3.10",
    install_requires=[
        "numpy",
        "scipy",
        "pillow",
        "tqdm",
        "pyyaml",
        "tensorboard",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist", "triton>=3.0", "ninja"],
        "triton": ["triton>=3.0"],
    },
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
