"""Builds torchmodules._C from csrc/*.cpp, plus kernels/*.cu when a CUDA toolkit is there.

Sources are found by globbing, so adding an op never touches this file.
CUDA is built whenever nvcc and a CUDA build of torch are present, with or without a
visible GPU (so CI compiles every kernel). TORCHMODULES_CUDA=0 forces a CPU-only build.
"""
import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """The toolkit folder holding include/cuda_runtime.h, or None.

    torch guesses CUDA_HOME from where nvcc sits; on some machines that nvcc is a small
    wrapper outside the toolkit, so we also try the `cuda` folder beside its bin/ and the
    usual install paths.
    """
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        bindir = os.path.dirname(nvcc)
        cands += [os.path.join(os.path.dirname(bindir), "cuda"),
                  os.path.dirname(bindir),
                  os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    cands += ["/usr/local/cuda"]
    for c in cands:
        if c and os.path.exists(os.path.join(c, "include", "cuda_runtime.h")) \
                and os.path.exists(os.path.join(c, "bin", "nvcc")):
            return c
    return None


def _gencode_flags(arch_list):
    """nvcc -gencode flags for a TORCH_CUDA_ARCH_LIST ("8.0;9.0", "8.6 9.0+PTX", ...), as torch
    would make them, except that compute capability 9.0 gets an sm_90a cubin instead of sm_90:
    kernels/gemm_sm90.cu's wgmma, TMA and setmaxnreg code exists only for that target (an
    sm_90a cubin runs on 9.0 devices only, as an sm_90 one does in practice: no 9.x other than
    9.0 exists). With sm_90a the only 9.0 cubin, an H100 or H200 loads it for certain; the
    kernel also checks at run time which image it got and falls back if not sm_90a.
    "+PTX" adds PTX of the plain compute_XY. None when the list has names torch knows but we
    do not ("Ampere"): torch's own flags are used then (sm_90 without the "a": the Hopper
    kernel stays off, the rest works)."""
    flags = []
    for entry in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        ptx = entry.endswith("+PTX")
        base = entry[:-4] if ptx else entry
        feat = base.endswith("a")
        base = base[:-1] if feat else base
        parts = base.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            return None
        num = parts[0] + parts[1]
        if num == "90" or feat:
            flags.append(f"-gencode=arch=compute_{num}a,code=sm_{num}a")
        else:
            flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags or None


def _arch_list():
    """TORCH_CUDA_ARCH_LIST, else the visible GPUs' compute capabilities (the last with +PTX,
    as torch does), else 8.0;9.0 (Ampere and Hopper, for a machine without a GPU, e.g. CI)."""
    import torch
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{a}.{b}" for a, b in caps) + "+PTX"
    return "8.0;9.0"


def _want_cuda():
    if os.environ.get("TORCHMODULES_CUDA", "1") == "0":
        return False
    import torch
    return torch.version.cuda is not None and _find_cuda_home() is not None


use_cuda = _want_cuda()
if use_cuda:
    # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME then.
    os.environ["CUDA_HOME"] = _find_cuda_home()
    import torch
    os.environ["TORCH_CUDA_ARCH_LIST"] = _arch_list()

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

# A C++ extension loads only into the torch it was compiled against: the wheel requires it.
TORCH_VERSION = torch.__version__.split("+")[0]

sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
# -fopenmp: at::parallel_for is inline OpenMP code. -fno-trapping-math: no kernel reads the
# floating-point exception flags, and without it GCC keeps a float op that a select may drop
# under a branch, which the AVX2 and SSE2 clones of a TM_SIMD loop (csrc/simd.h) do not
# vectorise. Values are unchanged (the flag only lets such ops run, or not, unconditionally).
cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math"]
# No debug info: Python's CFLAGS carry -g, which over torch's headers took 40-55% of the C++ compile
# time (relu.cpp 31 -> 14 s, log_softmax.cpp 56 -> 37 s) and made the objects ten times larger.
# TORCHMODULES_DEBUG_INFO=1 keeps it (gdb, perf annotate with source lines).
if os.environ.get("TORCHMODULES_DEBUG_INFO", "0") != "1":
    cxx_flags.append("-g0")
include_dirs = [os.path.join(ROOT, "csrc")]
if use_cuda:
    sources += sorted(glob.glob(os.path.join("kernels", "*.cu")))
    # ATen's CUDA headers pull in cuBLAS headers; the CUDA build of torch ships them.
    import torch
    nv = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
    include_dirs += [d for d in glob.glob(os.path.join(nv, "*", "include")) if os.path.isdir(d)]
    include_dirs += [d for d in glob.glob(os.path.join(nv, "*", "*", "include")) if os.path.isdir(d)]
    # Our -gencode flags (9.0 as sm_90a); torch then adds none of its own.
    gencode = _gencode_flags(os.environ["TORCH_CUDA_ARCH_LIST"]) or []
    print(f"torchmodules: TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} -> "
          f"{' '.join(gencode) if gencode else 'torch defaults'}")
    ext = CUDAExtension(
        "torchmodules._C", sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags + ["-DTORCHMODULES_CUDA"],
                            "nvcc": ["-O3", "-lineinfo", "-DTORCHMODULES_CUDA"] + gencode
                            + (["-Xptxas=-v"] if os.environ.get("TORCHMODULES_PTXAS_V") else [])},
        extra_link_args=["-fopenmp"])
else:
    ext = CppExtension("torchmodules._C", sources, include_dirs=include_dirs,
                       extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])

setup(
    name="torchmodules",
    version="0.1.0",
    description="Hand-written forward and backward kernels for the basic modules of a neural net",
    packages=["torchmodules"],
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.9",
    install_requires=[f"torch=={TORCH_VERSION}"],
)
