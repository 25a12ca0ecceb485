"""Builds quantext._C: a CppExtension, or a CUDAExtension when nvcc and a CUDA
build of torch are both present (QUANTEXT_CUDA=0/1 forces the choice)."""

import glob
import os
import platform
import shutil

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    forced = os.environ.get("QUANTEXT_CUDA")
    if forced is not None:
        return forced == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None and shutil.which("nvcc") is not None


def cpu_flags() -> list[str]:
    """Vector ISA for ATen's Vectorized<T>. Like -march=native, the build
    targets the machine it runs on; QUANTEXT_CPU_ARCH=generic turns it off."""
    if os.environ.get("QUANTEXT_CPU_ARCH", "native") == "generic" or platform.machine() != "x86_64":
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return []
    if " avx2 " in flags and " fma " in flags:
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return []


def cuda_library_headers() -> list[str]:
    """torch's CUDA headers include cuSPARSE/cuBLAS headers. A bare CUDA
    toolkit (nvcc + runtime) may lack them, while the CUDA build of torch
    brings them as pip packages: search those after the toolkit's own."""
    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "include", "cusparse.h")):
        return []
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
    found = sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "*", "include", "cusparse.h"))})
    return found


def extension():
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    # Headers count as inputs, so that a changed header rebuilds (ninja then
    # recompiles only the objects that include it).
    headers = sorted(glob.glob("csrc/**/*.h", recursive=True) + glob.glob("csrc/**/*.cuh", recursive=True))
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden"] + cpu_flags()
    if want_cuda():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        # No fast-math: the kernels must round exactly as the CPU does.
        nvcc = ["-O3", "-std=c++20"] + (["-Xptxas=-v"] if os.environ.get("QUANTEXT_PTXAS_V") else [])
        for d in cuda_library_headers():
            cxx += ["-idirafter", d]
            nvcc += [f"-Xcompiler=-idirafter,{d}"]
        return CUDAExtension(
            "quantext._C",
            sources + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=include_dirs,
            depends=headers,
            define_macros=[("QUANTEXT_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        )
    return CppExtension("quantext._C", sources, include_dirs=include_dirs, depends=headers,
                        extra_compile_args={"cxx": cxx})


setup(
    name="quantext",
    version="0.1.0",
    description="Quantization-aware training kernels and modules for PyTorch (uniform, PoT, APoT)",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
    # What `import quantext` needs; export also needs onnx and onnxruntime
    # (extras "export"), and the demo scikit-learn (requirements.txt pins all).
    install_requires=["torch>=2.9", "numpy", "tqdm"],
    extras_require={"export": ["onnx", "onnxruntime", "onnxscript", "ml-dtypes"]},
)
