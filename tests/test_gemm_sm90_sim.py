"""The Hopper GEMM's addressing and pipeline, simulated on the CPU (scripts/sim_gemm_sm90.py):
TMA 128-byte swizzle, wgmma shared-memory descriptors of both operand layouts, the
accumulator -> (row, col) map of the epilogue, bias and bounds, against the documented
layouts, exactly, for the three products of Linear; the mbarrier ring under random
interleavings; and a set of known bugs each of which a check must catch."""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import sim_gemm_sm90 as sim  # noqa: E402


def test_sim_budgets_and_accumulator_map():
    sim.check_budgets()
    sim.check_accumulator_map()


def test_sim_data_path():
    rng = np.random.default_rng(torch.initial_seed())  # TM_SEED replays it (conftest)
    sim.run_fixed(rng)
    sim.run_random(rng, 10)


def test_sim_pipeline():
    sim.run_pipelines(np.random.default_rng(torch.initial_seed()), 500)  # TM_SEED replays it (conftest)


def test_sim_catches_mutants():
    assert len(sim.check_mutants()) == len(sim.MUTANTS)
