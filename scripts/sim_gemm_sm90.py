"""CPU simulation of kernels/gemm_sm90.cu's addressing and pipeline, checkable without a GPU.

Two halves, each a model built from the documentation, against which the kernel's own
formulas (transcribed here from the .cu file, constants parsed from it) are run:

1. Data path. The hardware, modelled:
   - TMA (cp.async.bulk.tensor, CU_TENSOR_MAP_SWIZZLE_128B, zero fill out of bounds): box
     element (row r, inner c) goes to shared address swz(dst + 128 r + 2 c), rows of 64
     elements (128 bytes); every byte of the box is delivered and counted (the kernel's
     boxes are never larger than the tensor nor wholly outside it: asserted);
   - wgmma operands from a shared-memory descriptor (start, LBO, SBO >> 4, swizzle mode 1 =
     128 B), element (mn, k) of a k16 slice at swz(start + bytes) with the canonical layouts of
     the PTX ISA / CuTe, T = 8 elements per 16 bytes:
       K-major : ((8, m), (T, 2)) : ((8T, SBO), (1, T))
       MN-major: ((T, 8, m), (8, k)) : ((1, T, LBO), (8T, SBO))
   - swz(a) = a ^ (((a >> 7) & 7) << 4)  (Swizzle<3,4,3> on byte addresses);
   - the accumulator of wgmma .m64nNk16 .f32 in registers: CuTe's CLayout_64xN,
     ((4, 8, 4), (2, 2, N/8)) : ((128, 1, 16), (64, 8, 512)) over m + 64 n.
   The kernel, transcribed: tile order, TMA coordinates and destinations per stage and box,
   descriptor bases and k16 steps, transposition flags, the epilogue's register -> (row, col)
   map with bias, bounds and pair stores. Integer-valued inputs, so every sum is exact: C
   must equal A B + bias exactly, every element written exactly once.

2. Pipeline. mbarriers modelled as in the PTX ISA (phase, pending arrivals, transaction
   bytes; try_wait.parity(P) succeeds once the phase of parity P has completed, a fresh
   barrier counting the phase before its first as completed), TMA completions at random
   later times, wgmma groups retired only at wait_group. Random interleavings of the
   producer thread and the eight consumer warps, checking: no deadlock; a consumer reads a
   stage only when the k-step it expects has fully landed there; the producer never writes a
   stage that a consumer may still read (between its full-wait and its release, or in an
   un-retired wgmma group).

Usage: python scripts/sim_gemm_sm90.py [--cases N] [--seed S]
"""
import argparse
import os
import random
import re
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = open(os.path.join(ROOT, "kernels", "gemm_sm90.cu")).read()


def _const(name):
    m = re.search(r"\b" + name + r"\s*=\s*(\d+)", SRC)
    assert m, f"{name} not found in gemm_sm90.cu"
    return int(m.group(1))


BM, BN, BK, STAGES, GROUP, BOX, KROWS = (_const(n) for n in ("kBM", "kBN", "kBK", "kStages", "kGroup", "kBox",
                                                               "kKRows"))
A_BYTES, B_BYTES = BM * BK * 2, BN * BK * 2
BOX_BYTES = BOX * BOX * 2
KBOX_BYTES = KROWS * BK * 2
SMEM = 232448  # the H100's shared memory per block (opt-in), bytes

# ---- hardware models ------------------------------------------------------------------------


def swz(addr):
    """128-byte swizzle of a shared-memory byte address (works on numpy arrays)."""
    return addr ^ (((addr >> 7) & 7) << 4)


def tma_load(smem, tensor, inner_dim, outer_dim, ld, box_rows, c0, c1, dst):
    """A 64 x box_rows box at (c0 inner, c1 outer) of a row-major tensor (rows of ld
    elements; inner_dim x outer_dim valid) -> smem (element array, indexed by byte / 2)."""
    assert dst % 1024 == 0, "128-byte swizzle destinations must be 1024-byte aligned"
    assert box_rows <= outer_dim and BOX <= inner_dim, "box larger than the tensor"
    assert c0 < inner_dim and c1 < outer_dim, "box wholly outside the tensor"
    r = np.arange(box_rows)[:, None]
    c = np.arange(BOX)[None, :]
    gi, go = c0 + c, c1 + r
    inb = (gi < inner_dim) & (go < outer_dim) & (gi >= 0) & (go >= 0)
    vals = np.where(inb, tensor.reshape(-1)[np.where(inb, go * ld + gi, 0)], 0.0)
    addr = swz(dst + 128 * r + 2 * c)
    assert addr.max() + 2 <= SMEM
    smem[addr // 2] = vals
    return box_rows * BOX * 2  # transaction bytes (the whole box, zeros included)


def desc_fields(desc):
    start = (desc & 0x3FFF) << 4
    lbo = ((desc >> 16) & 0x3FFF) << 4
    sbo = ((desc >> 32) & 0x3FFF) << 4
    base_off = (desc >> 49) & 7
    mode = (desc >> 62) & 3
    assert mode == 1 and base_off == 0, (mode, base_off)
    assert desc & ~((0x3FFF) | (0x3FFF << 16) | (0x3FFF << 32) | (7 << 49) | (3 << 62)) == 0, "stray bits"
    return start, lbo, sbo


def wgmma_operand(smem, desc, mn_major, rows):
    """The rows x 16 (mn, k) slice a wgmma reads through desc."""
    start, lbo, sbo = desc_fields(desc)
    mn = np.arange(rows)[:, None]
    k = np.arange(16)[None, :]
    T = 8
    if mn_major:
        off = (mn % T) + (mn // T % 8) * T + (mn // 64) * (lbo // 2) + (k % 8) * 8 * T + (k // 8) * (sbo // 2)
    else:
        off = (mn % 8) * 8 * T + (mn // 8) * (sbo // 2) + (k % T) + (k // T) * T
    return smem[swz(start + 2 * off) // 2]


def clayout_64xN(n):
    """(thread, value) -> (m, n) of the wgmma accumulator, CuTe's CLayout_64xN."""
    t = np.arange(128)[:, None]
    v = np.arange(n // 2)[None, :]
    t0, t1, t2 = t % 4, t // 4 % 8, t // 32
    v0, v1, v2 = v % 2, v // 2 % 2, v // 4
    idx = 128 * t0 + 1 * t1 + 16 * t2 + 64 * v0 + 8 * v1 + 512 * v2
    return idx % 64, idx // 64


CL_M, CL_N = clayout_64xN(BN)

# ---- the kernel, transcribed ----------------------------------------------------------------


def tile_origin(t, tiles_m, tiles_n):
    per_group = GROUP * tiles_n
    first = t // per_group * GROUP
    rows = min(tiles_m - first, GROUP)
    r = t % per_group
    return (first + r % rows) * BM, r // rows * BN


def smem_desc(addr, lbo, sbo):
    return ((addr & 0x3FFFF) >> 4) | ((lbo & 0x3FFFF) >> 4) << 16 | ((sbo & 0x3FFFF) >> 4) << 32 | 1 << 62


def run_kernel(a, b, bias, M, N, K, lda, ldb, ldc, akc, bkc, sms, cpair, ring=1024):
    """C as the kernel computes it (float64, exact for integer inputs), and per-element
    write counts."""
    c = np.full(M * ldc, np.nan)
    writes = np.zeros(M * ldc, dtype=np.int64)
    smem = np.full(SMEM // 2, np.nan)  # NaN: whatever was never written by a TMA
    tiles_m, tiles_n = -(-M // BM), -(-N // BN)
    tiles, ktiles = tiles_m * tiles_n, -(-K // BK)
    grid = min(tiles, sms)
    ta = (K, M, lda, KROWS) if akc else (M, K, lda, BOX)  # inner, outer, ld, box rows
    tb = (K, N, ldb, KROWS) if bkc else (N, K, ldb, BOX)
    step_a, step_b = (32 if akc else 16 * 128), (32 if bkc else 16 * 128)
    lbo_a, lbo_b = (16 if akc else BOX_BYTES), (16 if bkc else BOX_BYTES)
    for cta in range(grid):
        s = 0
        for t in range(cta, tiles, grid):
            m0, n0 = tile_origin(t, tiles_m, tiles_n)
            d = [np.zeros((64, BN)) for _ in range(2)]  # per consumer, as the hardware holds it
            na = 1 if akc else min(BM // BOX, (M - m0 + BOX - 1) // BOX)
            nb = min(BN // KROWS, (N - n0 + KROWS - 1) // KROWS) if bkc else min(BN // BOX, (N - n0 + BOX - 1) // BOX)
            expect = na * (KBOX_BYTES if akc else BOX_BYTES) + nb * (KBOX_BYTES if bkc else BOX_BYTES)
            for kt in range(ktiles):
                # producer
                sa, sb = ring + s * A_BYTES, ring + STAGES * A_BYTES + s * B_BYTES
                k0 = kt * BK
                tx = 0
                if akc:
                    tx += tma_load(smem, a, *ta, k0, m0, sa)
                else:
                    for j in range(na):
                        tx += tma_load(smem, a, *ta, m0 + j * BOX, k0, sa + j * BOX_BYTES)
                if bkc:
                    for j in range(nb):
                        tx += tma_load(smem, b, *tb, k0, n0 + j * KROWS, sb + j * KBOX_BYTES)
                else:
                    for j in range(nb):
                        tx += tma_load(smem, b, *tb, n0 + j * BOX, k0, sb + j * BOX_BYTES)
                assert tx == expect, "expect_tx bytes != bytes the TMA delivers"
                # consumers
                for cw in range(2):
                    desc_a0 = smem_desc(ring + cw * 64 * 128, lbo_a, 1024)
                    desc_b0 = smem_desc(ring + STAGES * A_BYTES, lbo_b, 1024)
                    for kk in range(BK // 16):
                        da = desc_a0 + ((s * A_BYTES + kk * step_a) >> 4)
                        db = desc_b0 + ((s * B_BYTES + kk * step_b) >> 4)
                        A = wgmma_operand(smem, da, not akc, 64)    # (m, k)
                        B = wgmma_operand(smem, db, not bkc, BN)    # (n, k)
                        # Skipped boxes leave stale (here NaN) rows that may only reach dropped outputs.
                        ma, nbv = max(0, min(64, M - m0 - cw * 64)), max(0, min(BN, N - n0))
                        assert not np.isnan(A[:ma]).any() and not np.isnan(B[:nbv]).any(), \
                            "read shared memory no TMA wrote, for an output that is kept"
                        acc = kt > 0 or kk > 0
                        d[cw] = (d[cw] if acc else 0) + A @ B.T
                s = (s + 1) % STAGES
            # epilogue: registers per CLayout; the kernel's map from register to (row, col)
            for cw in range(2):
                regs = d[cw][CL_M, CL_N]  # regs[thread][value]
                for tid in range(128):
                    w, l = tid // 32, tid % 32
                    row0 = m0 + cw * 64 + w * 16 + l // 4
                    col0 = n0 + 2 * (l % 4)
                    whole = cpair and m0 + cw * 64 + 64 <= M and n0 + BN <= N
                    for j in range(BN // 8):
                        col = col0 + 8 * j
                        b0 = bias[col] if bias is not None and (whole or col < N) else 0.0
                        b1 = bias[col + 1] if bias is not None and (whole or col + 1 < N) else 0.0
                        for h in range(2):
                            row = row0 + 8 * h
                            if not whole and row >= M:
                                continue
                            r0, r1 = regs[tid, 4 * j + 2 * h] + b0, regs[tid, 4 * j + 2 * h + 1] + b1
                            p = row * ldc + col
                            if whole or (cpair and col + 1 < N):
                                assert p % 2 == 0, "pair store not 4-byte aligned"
                                assert row < M and col + 1 < N, "unchecked store out of bounds"
                                c[p], c[p + 1] = r0, r1
                                writes[p] += 1
                                writes[p + 1] += 1
                            else:
                                if col < N:
                                    c[p] = r0
                                    writes[p] += 1
                                if col + 1 < N:
                                    c[p + 1] = r1
                                    writes[p + 1] += 1
    return c.reshape(M, ldc)[:, :N], writes.reshape(M, ldc)


def check_datapath(rng, M, N, K, akc, bkc, with_bias, sms, ldpad=(0, 0, 0)):
    """One product as linear.cu hands it over; C compared exactly with float64 A B + bias."""
    A = rng.integers(-3, 4, size=(M, K)).astype(np.float64)
    B = rng.integers(-3, 4, size=(K, N)).astype(np.float64)
    bias = rng.integers(-3, 4, size=N).astype(np.float64) if with_bias else None
    # storage: A k-contiguous a[m*lda + k], else a[k*lda + m]; B k-contiguous b[n*ldb + k], else b[k*ldb + n]
    lda = (K if akc else M) + ldpad[0]
    ldb = (K if bkc else N) + ldpad[1]
    ldc = N + ldpad[2]
    a = np.zeros((M if akc else K, lda))
    a[:, : (K if akc else M)] = A if akc else A.T
    bb = np.zeros((N if bkc else K, ldb))
    bb[:, : (K if bkc else N)] = B.T if bkc else B
    c, writes = run_kernel(a, bb, bias, M, N, K, lda, ldb, ldc, akc, bkc, sms, cpair=ldc % 2 == 0)
    ref = A @ B + (bias if bias is not None else 0)
    assert (writes[:, :N] == 1).all(), f"elements written {writes[:, :N].min()}..{writes[:, :N].max()} times"
    assert (writes[:, N:] == 0).all(), "write into the row padding"
    bad = ~(c == ref)
    assert not bad.any(), f"{int(bad.sum())} wrong, first at {np.argwhere(bad)[0]}"


# ---- pipeline protocol ----------------------------------------------------------------------


class MBarrier:
    def __init__(self, count):
        self.count, self.pending, self.tx, self.phase = count, count, 0, 0

    def _maybe_complete(self):
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.count

    def arrive(self, expect_tx=0):
        assert self.pending > 0
        self.tx += expect_tx
        self.pending -= 1
        self._maybe_complete()

    def complete_tx(self, n):
        self.tx -= n
        self._maybe_complete()

    def try_wait(self, parity):
        return self.phase % 2 != parity


# The kernel's mbarrier arrival counts.
FULL_COUNT = int(re.search(r"mbar_init\(full0 \+ 8 \* s, (\d+)\)", SRC).group(1))
EMPTY_COUNT = int(re.search(r"mbar_init\(empty0 \+ 8 \* s, (\d+)\)", SRC).group(1))
CONSUMER_WARPS = 8  # two warpgroups; each warp waits for its wgmmas and arrives on its own


def check_pipeline(rng, tiles_per_cta, ktiles):
    """The producer thread and the 8 consumer warps as generators yielding at every
    instruction that waits or touches shared state; a random scheduler runs them with
    asynchronous TMA completions. A warp's wgmmas count as reading their stage until that
    warp's own wait_group retires them (warps of a warpgroup may finish at different times)."""
    full = [MBarrier(FULL_COUNT) for _ in range(STAGES)]
    empty = [MBarrier(EMPTY_COUNT) for _ in range(STAGES)]
    content = [None] * STAGES        # (tile, kt) the stage holds once landed
    landing = [None] * STAGES        # (tile, kt) in flight
    in_use = [set() for _ in range(STAGES)]  # warps between their full-wait and their release
    inflight = [[] for _ in range(CONSUMER_WARPS)]  # per warp: stages of un-retired wgmma groups, oldest first
    tma_events = []                  # stages whose copies are in flight
    log = []

    def producer():
        s, phase = 0, 0
        for t in range(tiles_per_cta):
            for kt in range(ktiles):
                while not empty[s].try_wait(phase ^ 1):
                    yield
                full[s].arrive(expect_tx=A_BYTES + B_BYTES)
                assert not in_use[s], f"producer overwrites stage {s} while consumer warps {in_use[s]} hold it"
                assert all(s not in g for g in inflight), f"producer overwrites stage {s} under a running wgmma"
                assert landing[s] is None
                landing[s], content[s] = (t, kt), None
                tma_events.append(s)
                yield
                s, phase = (s + 1) % STAGES, phase ^ (s + 1 == STAGES)

    def consumer(cw):
        s, phase = 0, 0
        for t in range(tiles_per_cta):
            groups = inflight[cw]
            prev = -1
            for kt in range(ktiles):
                while not full[s].try_wait(phase):
                    yield
                in_use[s].add(cw)
                assert content[s] == (t, kt), f"consumer warp {cw} reads stage {s} holding {content[s]}, wants {(t, kt)}"
                groups.append(s)  # wgmmas issued and committed
                yield
                while len(groups) > 1:  # wait_group 1
                    groups.pop(0)
                if prev >= 0:
                    assert prev not in groups, "releasing a stage under a running wgmma"
                    in_use[prev].discard(cw)
                    empty[prev].arrive()
                    yield
                prev = s
                s, phase = (s + 1) % STAGES, phase ^ (s + 1 == STAGES)
            groups.clear()  # wait_group 0
            if prev >= 0:
                in_use[prev].discard(cw)
                empty[prev].arrive()
                yield
            log.append(("epilogue", cw, t))
            yield

    agents = {"P": producer(), **{f"C{i}": consumer(i) for i in range(CONSUMER_WARPS)}}
    live = dict(agents)
    steps = 0
    while live or tma_events:
        choices = list(live) + (["TMA"] if tma_events else [])
        pick = choices[rng.integers(len(choices))]
        steps += 1
        assert steps < 10 ** 6, "no progress: deadlock"
        if pick == "TMA":
            s = tma_events.pop(rng.integers(len(tma_events)))
            content[s], landing[s] = landing[s], None
            full[s].complete_tx(A_BYTES + B_BYTES)
            continue
        try:
            next(live[pick])
        except StopIteration:
            del live[pick]
    assert len(log) == CONSUMER_WARPS * tiles_per_cta
    assert all(b.pending == b.count and b.tx == 0 for b in full + empty), "barrier left mid-phase"


# ---- the checks ---------------------------------------------------------------------------

PRODUCTS = [(True, True), (True, False), (False, False)]  # y = x W^T, dx = dy W, dW = dy^T x
FIXED = [(128, 256, 64), (200, 264, 136), (130, 136, 192), (256, 512, 256), (129, 257, 65), (300, 520, 200),
         (640, 300, 72)]


def check_budgets():
    """Register budget and shared memory, as the kernel's static_asserts."""
    assert 128 * _const("kProducerRegs") + 256 * _const("kConsumerRegs") <= 384 * 168
    assert 1024 + STAGES * (A_BYTES + B_BYTES) <= SMEM


def check_accumulator_map():
    """The map the kernel's epilogue uses equals CuTe's CLayout_64xN."""
    t = np.arange(128)[:, None]
    i = np.arange(BN // 2)[None, :]
    w, l = t // 32, t % 32
    assert (CL_M == 16 * w + l // 4 + 8 * (i // 2 % 2)).all() and (CL_N == 8 * (i // 4) + 2 * (l % 4) + i % 2).all()


def run_fixed(rng, shapes=FIXED):
    n = 0
    for M, N, K in shapes:
        for akc, bkc in PRODUCTS:
            for bias in (False, True):
                check_datapath(rng, M, N, K, akc, bkc, bias, sms=3)
                n += 1
    check_datapath(rng, 200, 264, 136, True, True, True, sms=2, ldpad=(8, 8, 1))  # odd ldc: no pair stores
    check_datapath(rng, 200, 264, 136, False, False, True, sms=2, ldpad=(16, 8, 2))
    return n + 2


def run_random(rng, cases):
    for _ in range(cases):
        M, N = int(rng.integers(128, 700)), int(rng.integers(128, 700))
        K = int(rng.integers(64, 330))
        akc, bkc = PRODUCTS[rng.integers(3)]
        # what the dispatch allows: k-contiguous operands need K % 8 == 0, MN-major ones M or N % 8 == 0
        if akc or bkc:
            K = K // 8 * 8
        if not akc:
            M = M // 8 * 8
        if not bkc:
            N = N // 8 * 8
        check_datapath(rng, M, N, K, akc, bkc, bool(rng.integers(2)), sms=int(rng.integers(1, 6)))


def run_pipelines(rng, n):
    for _ in range(n):
        check_pipeline(rng, int(rng.integers(1, 5)), int(rng.integers(1, 10)))


# Bugs the checks must catch: (name, text of this file, replacement).
MUTANTS = [
    ("MN-major LBO = SBO", "lbo_a, lbo_b = (16 if akc else BOX_BYTES), (16 if bkc else BOX_BYTES)",
     "lbo_a, lbo_b = (16 if akc else 1024), (16 if bkc else 1024)"),
    ("K-major k16 step 16 B", "step_a, step_b = (32 if akc else 16 * 128)", "step_a, step_b = (16 if akc else 16 * 128)"),
    ("MN-major k16 step 8 rows", "(32 if bkc else 16 * 128)\n", "(32 if bkc else 8 * 128)\n"),
    ("epilogue column", "col0 = n0 + 2 * (l % 4)", "col0 = n0 + (l % 4)"),
    ("epilogue row", "row0 = m0 + cw * 64 + w * 16 + l // 4", "row0 = m0 + cw * 64 + w * 8 + l // 4"),
    ("epilogue register", "regs[tid, 4 * j + 2 * h] + b0, regs[tid, 4 * j + 2 * h + 1] + b1",
     "regs[tid, 4 * j + h] + b0, regs[tid, 4 * j + h + 2] + b1"),
    ("TMA coordinates swapped", "tma_load(smem, a, *ta, m0 + j * BOX, k0, sa + j * BOX_BYTES)",
     "tma_load(smem, a, *ta, k0, m0 + j * BOX, sa + j * BOX_BYTES)"),
    ("second consumer's rows", "desc_a0 = smem_desc(ring + cw * 64 * 128, lbo_a, 1024)",
     "desc_a0 = smem_desc(ring + cw * 64 * 64, lbo_a, 1024)"),
    ("B transpose flag", "B = wgmma_operand(smem, db, not bkc, BN)", "B = wgmma_operand(smem, db, False, BN)"),
    ("tile order", "return (first + r % rows) * BM, r // rows * BN", "return (first + r % rows) * BM, r // GROUP * BN"),
    ("release before wait_group", "                while len(groups) > 1:  # wait_group 1\n                    groups.pop(0)\n",
     ""),
    ("a box short", "na = 1 if akc else min(BM // BOX, (M - m0 + BOX - 1) // BOX)",
     "na = 1 if akc else min(BM // BOX, (M - m0) // BOX)"),
    ("one arrival per warpgroup", "empty = [MBarrier(EMPTY_COUNT)", "empty = [MBarrier(2)"),
    ("empty-wait parity", "while not empty[s].try_wait(phase ^ 1):", "while not empty[s].try_wait(phase):"),
    ("full-wait parity", "while not full[s].try_wait(phase):", "while not full[s].try_wait(phase ^ 1):"),
]


def check_mutants():
    """Each mutant of the transcribed kernel must fail a check; returns the messages."""
    here = open(os.path.abspath(__file__)).read()
    cut = here.index("# ---- the checks")  # mutate the models and the transcribed kernel only
    code, checks = here[:cut], here[cut:]
    out = []
    for name, old, new in MUTANTS:
        assert code.count(old) == 1, f"mutant {name!r}: its text is not found once"
        ns = {"__name__": "sim_gemm_sm90_mutant", "__file__": os.path.abspath(__file__)}
        exec(compile(code.replace(old, new) + checks, f"mutant {name}", "exec"), ns)
        rng = np.random.default_rng(1)
        try:
            ns["run_fixed"](rng, FIXED[1:2])
            ns["run_pipelines"](rng, 300)
        except AssertionError as e:
            out.append(f"{name}: caught ({str(e)[:70]})")
            continue
        raise AssertionError(f"mutant {name!r} passed every check")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=300, help="random data-path cases")
    ap.add_argument("--pipelines", type=int, default=3000, help="random pipeline interleavings")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mutants", action="store_true", help="also check that known bugs are caught")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    check_budgets()
    check_accumulator_map()
    print("accumulator map: register 4j+2h+e of (warp w, lane l) = D[16w + l/4 + 8h][8j + 2(l%4) + e]  ok")
    print(f"data path: {run_fixed(rng)} fixed cases exact")
    run_random(rng, args.cases)
    print(f"data path: {args.cases} random cases (M, N in [128, 700), K in [64, 330), all three products) exact")
    run_pipelines(np.random.default_rng(args.seed + 1), args.pipelines)
    print(f"pipeline: {args.pipelines} random interleavings (1-4 tiles, 1-9 K steps, {STAGES} stages): "
          "no deadlock, no stage overwritten while read, every read sees its own K step")
    if args.mutants:
        for line in check_mutants():
            print("mutant", line)
    print("sim_gemm_sm90: all checks passed")


if __name__ == "__main__":
    sys.exit(main())
