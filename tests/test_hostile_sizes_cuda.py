"""test_hostile_sizes.py's cases on CUDA, at the CUDA kernels' own boundaries.

The row kernels (kernels/rows.cuh) pick a warp per row up to 32 lanes x kWarpK chunks of 16 bytes
(512 / 1024 elements for most ops); then, for LogSoftmax rows of whole 16-byte chunks on a GPU that
gives a block 76 KB of shared memory (A100, H100), the row in shared memory up to 72 KB (18432 float32,
36864 bfloat16: its 4096-16384 here, and 1024 in the backward); else (the other row ops, and odd lengths) a block
holding the row in registers up to 1024 threads x kBlockK chunks (8192 / 16384); and a streaming block
beyond; lengths that are not a
whole number of 16-byte chunks, and inputs off 16-byte alignment, take the scalar loads. Elementwise
kernels read 16-byte vectors (4 float32, 8 half), 2 per thread, 256 threads a block, and ReLU / Maximum
pack their masks in 32-bit words (32 / 16 elements). NearestNeighbor tiles 64 rows x 64 prototypes x 16
features and sums the weight gradient in chunks of 256 rows. The hostile values go on those boundaries;
each case is compared, forward and gradients, with torch's op on the CPU in float64 (as on the CPU).
Skipped without a GPU; the GPU script (scripts/gpu_check.sh) runs them (-k cuda). TM_HOSTILE_DEVICE=cpu
runs the same cases on the CPU's kernels (a dry run of the file where there is no GPU)."""
import math
import os

import pytest
import torch

import test_hostile_sizes as H
import torchmodules.functional as TF

CUDA = os.environ.get("TM_HOSTILE_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(CUDA == "cuda" and not torch.cuda.is_available(), reason="needs a GPU")

F64, F32, BF16 = H.F64, H.F32, H.BF16
DT = H.DT
DT3 = pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=str)

# Row lengths around the warp / block / stream limits, odd ones (scalar loads) beside them.
ROWS = [1, 5, 8, 9, 33, 255, 511, 512, 513, 1023, 1024, 1025, 4097, 8191, 8192, 8193, 16384, 16385, 32771]
# Where vectors, lanes' chunks, warps and blocks start inside a row.
ROW_BOUNDS = (4, 8, 128, 256, 512, 1024, 4096, 8192, 16384)
# Element counts around vectors, mask words, blocks (256 threads x 2 vectors) and a large grid.
FLAT = [1, 3, 4, 5, 8, 9, 31, 32, 33, 1023, 2047, 2048, 2049, 4097, 2**16 + 3, 2**20 + 7]
FLAT_BOUNDS = (4, 8, 16, 32, 2048, 4096, 65536, 2**20)


def _misaligned(f):
    """f on a view 1 element into a copy: its data off 16-byte alignment (the scalar kernels)."""
    def g(*args):
        return f(*[torch.cat([a.reshape(-1)[:1], a.reshape(-1)])[1:].view(a.shape)
                   if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args])
    return g


# ---- log_softmax ----------------------------------------------------------------------------

@DT
@pytest.mark.parametrize("n", ROWS)
def test_cuda_log_softmax_rows(n, dtype):
    labels, x = H.hostile_rows(n, dtype, H.KINDS if n < 8192 else ("nan", "-inf", "huge"), ROW_BOUNDS)
    H.check(f"cuda log_softmax n={n}", lambda v: TF.log_softmax(v, -1), lambda v: torch.log_softmax(v, -1), [x],
            dtype, scale=4 * max(1.0, math.sqrt(n) / 16), labels=labels, device=CUDA)


@DT3
@pytest.mark.parametrize("n", [33, 1024, 8193])
def test_cuda_log_softmax_misaligned(n, dtype):
    labels, x = H.hostile_rows(n, dtype, ("nan", "-inf", "huge"), ROW_BOUNDS)
    H.check(f"cuda log_softmax misaligned n={n}", _misaligned(lambda v: TF.log_softmax(v, -1)),
            lambda v: torch.log_softmax(v, -1), [x], dtype, scale=4 * max(1.0, math.sqrt(n) / 16), labels=labels,
            device=CUDA)


@DT3
@pytest.mark.parametrize("n", [17, 1025, 8193])
@pytest.mark.parametrize("inner", [2, 31, 33])
def test_cuda_log_softmax_inner(n, inner, dtype):
    """Rows at a stride (the column kernel: 32 x by threads a tile)."""
    _, x = H.hostile_rows(n, dtype, ("nan", "inf", "-inf", "huge"), ROW_BOUNDS)
    x = x[: x.shape[0] // inner * inner].view(-1, inner, n).permute(0, 2, 1).contiguous()
    H.check(f"cuda log_softmax n={n} inner={inner}", lambda v: TF.log_softmax(v, 1),
            lambda v: torch.log_softmax(v, 1), [x], dtype, scale=4, device=CUDA)


# ---- cross_entropy, nll_loss ----------------------------------------------------------------

@DT3
@pytest.mark.parametrize("n", ROWS)
@pytest.mark.parametrize("variant", ["none", "smooth_weight_sum", "prob_none", "mean_weight_ignore"])
def test_cuda_cross_entropy_rows(n, variant, dtype):
    if variant == "mean_weight_ignore" and n not in (1, 9, 1025, 16385):
        pytest.skip("the mean with weights and ignored rows at a few lengths (run time)")
    opts = H.CE_VARIANTS[variant]
    labels, x = H.hostile_rows(n, dtype, H.KINDS if n < 8192 else ("nan", "-inf", "huge"), ROW_BOUNDS)
    x, t = H._ce_inputs(x, labels, opts)
    ours, ref = H._ce_fns(opts, n)
    H.check(f"cuda cross_entropy {variant} C={n}", ours, ref, [x, t], dtype, scale=8, labels=labels, device=CUDA)


@DT3
@pytest.mark.parametrize("C", [17, 1025])
@pytest.mark.parametrize("inner", [3, 33])
@pytest.mark.parametrize("variant", ["none", "smooth_weight_sum", "prob_none"])
def test_cuda_cross_entropy_spatial(C, inner, variant, dtype):
    opts = H.CE_VARIANTS[variant]
    _, x = H.hostile_rows(C, dtype, ("nan", "inf", "-inf", "huge"), ROW_BOUNDS)
    x = x[: x.shape[0] // inner * inner].view(-1, inner, C).permute(0, 2, 1).contiguous()
    x, t = H._ce_inputs(x, None, opts)
    ours, ref = H._ce_fns(opts, C)
    H.check(f"cuda cross_entropy {variant} (N, {C}, {inner})", ours, ref, [x, t], dtype, scale=8, device=CUDA)


@DT3
@pytest.mark.parametrize("n", [1, 9, 1025, 8193])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cuda_nll_loss_rows(n, reduction, dtype):
    H.nll_case(n, reduction, dtype, ROW_BOUNDS, device=CUDA)


# ---- amax -------------------------------------------------------------------------------------

@DT
@pytest.mark.parametrize("n", ROWS)
def test_cuda_amax_rows(n, dtype):
    labels, x = H.hostile_rows(n, dtype, H.KINDS if n < 8192 else ("nan", "-inf", "inf"), ROW_BOUNDS)
    x = H._with_ties(x)
    H.check(f"cuda amax n={n}", lambda v: TF.amax(v, -1), lambda v: torch.amax(v, -1), [x], dtype, scale=4,
            labels=labels, device=CUDA)


@DT3
@pytest.mark.parametrize("n", [17, 1025, 2**16 + 3])
@pytest.mark.parametrize("dims", [(0,), (), (0, 2)], ids=["dim0", "all", "apart"])
def test_cuda_amax_other_dims(n, dims, dtype):
    _, x = H.hostile_rows(n, dtype, ("nan", "-inf", "inf"), ROW_BOUNDS, blocks=n < 2**16)
    x = H._with_ties(x)[:4 if n > 2**16 else None]
    x = x.view(x.shape[0], 1, n).expand(-1, 2, -1).contiguous() if dims == (0, 2) else x
    H.check(f"cuda amax n={n} dims={dims}", lambda v: TF.amax(v, dims, True), lambda v: torch.amax(v, dims, True),
            [x], dtype, scale=4 * x.shape[0], device=CUDA)


# ---- elementwise: relu, maximum, add, mse_loss, duplicate --------------------------------------

def _flat(n, dtype, shift=0):
    return H._flat_hostile(n, dtype, shift=shift, bounds=FLAT_BOUNDS)


@DT
@pytest.mark.parametrize("n", FLAT)
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "misaligned"])
def test_cuda_relu(n, aligned, dtype):
    x = torch.cat([_flat(n, dtype, shift=s) for s in range(3)])
    f = TF.relu if aligned else _misaligned(TF.relu)
    H.check(f"cuda relu n={n}", f, torch.relu, [x], dtype, sign=True, device=CUDA)
    H.check(f"cuda relu n={n} hostile dy", f, torch.relu, [x], dtype, device=CUDA,
            gouts=[H._hostile_grad(x.shape, dtype, "nan", FLAT_BOUNDS)])


@DT
@pytest.mark.parametrize("n", FLAT)
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "misaligned"])
def test_cuda_maximum(n, aligned, dtype):
    a = torch.cat([_flat(n, dtype, shift=s) for s in range(2)])
    b = torch.cat([_flat(n, dtype, shift=s + 3) for s in range(2)])
    b[::2] = a[::2]
    z = torch.rand(a.shape) < 0.05
    a[z], b[z] = -0.0, 0.0
    f = TF.maximum if aligned else _misaligned(TF.maximum)
    H.check(f"cuda maximum n={n}", f, torch.maximum, [a, b], dtype, device=CUDA)
    H.check(f"cuda maximum n={n} hostile dy", f, torch.maximum, [a, b], dtype, device=CUDA,
            gouts=[H._hostile_grad(a.shape, dtype, "inf", FLAT_BOUNDS)])


@DT
@pytest.mark.parametrize("op", ["maximum", "add"])
@pytest.mark.parametrize("pair", list(H.BCAST))
@pytest.mark.parametrize("R,C", [(3, 17), (65, 33), (5, 2049), (1025, 9), (2**16 + 3, 1), (1, 2**16 + 3)])
def test_cuda_broadcast(op, pair, R, C, dtype):
    H.broadcast_case(op, pair, R, C, dtype, FLAT_BOUNDS, device=CUDA)


@DT
@pytest.mark.parametrize("n", FLAT)
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "misaligned"])
def test_cuda_add_flat(n, aligned, dtype):
    a, b = _flat(n, dtype), _flat(n, dtype, shift=4)
    H.check(f"cuda add n={n}", TF.add if aligned else _misaligned(TF.add), torch.add, [a, b], dtype, sign=True,
            device=CUDA)


@DT
@pytest.mark.parametrize("n", FLAT)
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cuda_mse_loss(n, reduction, dtype):
    H.mse_case(n, reduction, dtype, FLAT_BOUNDS, device=CUDA)


@DT3
@pytest.mark.parametrize("n", [1, 9, 2049, 2**16 + 3])
@pytest.mark.parametrize("copies", [2, 3])
def test_cuda_duplicate(n, copies, dtype):
    H.duplicate_case(n, copies, dtype, FLAT_BOUNDS, device=CUDA)


@DT
@pytest.mark.parametrize("n", [1, 15, 17, 31, 33, 2**16 + 3])
def test_cuda_masks_are_the_cpu_masks(n, dtype):
    """ReLU's and Maximum's saved masks are the same bytes on both devices, the slots past the last
    element of a partial word included (0): a mask saved on one device serves the other's backward."""
    x, y = _flat(n, dtype), _flat(n, dtype, shift=5)
    y[::3] = x[::3]
    for name, f, args in (("relu", torch.ops.torchmodules.relu_forward, (x,)),
                          ("maximum", torch.ops.torchmodules.maximum_forward, (x, y))):
        cpu = f(*args)[1]
        dev = f(*(a.to(CUDA) for a in args))[1].cpu()
        assert torch.equal(dev, cpu), f"{name} n={n}: the masks differ"


@DT3
@pytest.mark.parametrize("n", [3, 2049])
def test_cuda_duplicate_keeps_negative_zero(n, dtype):
    """Duplicate's backward of gradients that are all -0.0 gives -0.0 (as torch's autograd and the
    CPU: the sum starts from the first gradient, not from +0.0)."""
    x = torch.randn(n, dtype=dtype, device=CUDA, requires_grad=True)
    outs = TF.duplicate(x, 3)
    g, = torch.autograd.grad(outs, [x], [torch.full_like(o, -0.0) for o in outs])
    ref = torch.full((n,), -0.0, dtype=dtype)
    assert torch.equal(g.cpu().signbit(), ref.signbit()) and not g.cpu().any()


# ---- linear, nearest_neighbor, sgd --------------------------------------------------------------

@DT
@pytest.mark.parametrize("M,K,N", [(1, 17, 33), (5, 257, 31), (129, 65, 257), (255, 128, 129), (300, 1000, 260)])
@pytest.mark.parametrize("kind", ["nan_x", "inf_w", "inf_b", "zero_times_inf"])
@pytest.mark.parametrize("op", ["linear", "linear_relu"])
def test_cuda_linear(op, M, K, N, kind, dtype):
    """NaN and infinities at the GEMM tiles' edges (128 x 128 / 128 x 256 tiles, 64-deep k blocks)."""
    H.linear_case(op, M, K, N, kind, dtype, device=CUDA)


@DT3
@pytest.mark.parametrize("N,K,D", [(63, 65, 15), (64, 64, 16), (65, 129, 17), (513, 1, 5), (257, 3, 33)])
@pytest.mark.parametrize("kind", ["ties", "nan_x", "inf_both"])
def test_cuda_nearest_neighbor(N, K, D, kind, dtype):
    """Ties, duplicate prototypes, NaN and infinities at the 64 x 64 x 16 tiles' edges; one prototype
    for 513 rows (the weight gradient's chunks of 256 rows)."""
    H.nn_case(N, K, D, kind, dtype, FLAT_BOUNDS, device=CUDA)


@DT
@pytest.mark.parametrize("options", list(H.SGD_OPTIONS))
@pytest.mark.parametrize("kind", ["nan", "inf", "huge"])
def test_cuda_sgd(options, kind, dtype):
    H.sgd_case(options, kind, dtype, [1, 3, 4, 5, 9, 33, 2047, 2049, 2**16 + 3], device=CUDA)
