#!/usr/bin/env bash
# Compiles one kernels/*.cu to an object file with the flags the extension build uses,
# to check a kernel quickly (and read ptxas's resource report with -Xptxas=-v). sm_90a as the
# build has it: for plain sm_90 the Hopper GEMM (kernels/gemm_sm90.cu) compiles to an empty stub.
# The C++ standard is the one that torch's cpp_extension passes (c++17 up to torch 2.11, the GPU
# machine's; c++20 in 2.14): PYTHON=.venv-torch2.11.0/bin/python (scripts/check_torch.sh makes it)
# checks a kernel as the GPU machine will build it.
# Usage: scripts/nvcc_one.sh kernels/relu.cu [extra nvcc flags...]
set -euo pipefail
src=$1; shift
PY=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
TORCH=$($PY -c 'import torch,os;print(os.path.dirname(torch.__file__))')
PYINC=$($PY -c 'import sysconfig;print(sysconfig.get_paths()["include"])')
STD=$($PY -c 'import re, inspect, torch.utils.cpp_extension as c
print(re.search(r"cuda_cflags = \[.-std=(c\+\+\d\d).\]", inspect.getsource(c)).group(1))' 2>/dev/null || echo c++17)
# The CUDA libraries' headers that ship with torch's wheel (cuSPARSE, cuBLAS: ATen's CUDA headers
# include them), as setup.py adds them.
NVINC=$(for d in "$(dirname "$TORCH")"/nvidia/*/include "$(dirname "$TORCH")"/nvidia/*/*/include; do
  if [ -d "$d" ]; then printf -- '-I %s ' "$d"; fi; done)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
mkdir -p /tmp/nvcc_one
exec "$CUDA_HOME/bin/nvcc" -c "$src" -o "/tmp/nvcc_one/$(basename "$src").o" \
  -I "$(dirname "$0")/../csrc" -I "$TORCH/include" -I "$TORCH/include/torch/csrc/api/include" -I "$PYINC" $NVINC \
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
  -D__CUDA_NO_HALF2_OPERATORS__ --expt-relaxed-constexpr -DTORCHMODULES_CUDA -O3 -lineinfo "-std=$STD" \
  -Xcompiler -fPIC -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90a,code=sm_90a "$@"
