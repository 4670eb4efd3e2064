"""LDM's "uniform" timestep grid of the PLMS sampler (``spacing="ldm"``), against a naive version of
LDM's ``make_ddim_timesteps``: ``range(0, T, T // steps) + 1``."""
from __future__ import annotations

import pytest
import torch

from layoutdiffuse.diffusion import GaussianDiffusion, make_sampler
from layoutdiffuse.diffusion.solvers import ldm_timesteps
from layoutdiffuse.errors import UserError


def naive_ldm_grid(num_timesteps: int, steps: int) -> list[int]:
    """LDM's rule written out: every ``T // steps``-th timestep from 0, plus one; the entry ``T`` (past
    the chain's last timestep ``T - 1``) is left out."""
    stride = num_timesteps // steps
    grid = []
    t = 0
    while t < num_timesteps:
        if t + 1 <= num_timesteps - 1:
            grid.append(t + 1)
        t += stride
    return grid


CASES = [(1000, 20), (1000, 50), (1000, 3), (1000, 30), (1000, 7), (1000, 999), (1000, 1), (100, 9), (100, 10), (100, 99), (8, 3), (2, 1)]


@pytest.mark.parametrize("num_timesteps, steps", CASES)
def test_ldm_grid_is_the_naive_rule(num_timesteps, steps):
    grid = ldm_timesteps(num_timesteps, steps).tolist()
    assert grid == naive_ldm_grid(num_timesteps, steps)
    assert grid[0] == 1 and grid[-1] <= num_timesteps - 1 and len(grid) >= steps
    assert all(b - a == num_timesteps // steps for a, b in zip(grid, grid[1:]))


def test_ldm_grid_known_values():
    assert ldm_timesteps(1000, 20).tolist() == list(range(1, 1000, 50))  # LDM's 20 PLMS steps: 1, 51, ..., 951
    assert ldm_timesteps(1000, 3).tolist() == [1, 334, 667]  # 1000 is past the chain: left out
    assert ldm_timesteps(100, 9).tolist() == [1, 12, 23, 34, 45, 56, 67, 78, 89]
    assert len(ldm_timesteps(1000, 30)) == 31  # as in LDM: 30 does not divide 1000


@pytest.mark.parametrize("num_timesteps, steps", [(100, 9), (1000, 3), (1000, 30), (1000, 999), (100, 1)])
def test_plms_with_the_ldm_grid_samples_every_step_count(num_timesteps, steps):
    """These step counts used to index past the chain (IndexError); each now samples, one model call
    per grid timestep (plus the improved-Euler warm-up's one), and the sampler reports that count."""
    d = GaussianDiffusion("linear", num_timesteps)
    sampler = make_sampler("plms", d, steps=steps, spacing="ldm", warmup="improved_euler")
    calls = []

    def eps(x, t):
        calls.append(int(t[0]))
        return 0.1 * x

    out = sampler.sample(eps, (2, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    grid = naive_ldm_grid(num_timesteps, steps)
    assert torch.isfinite(out).all() and sampler.steps == len(grid)
    assert sorted(set(calls)) == grid and len(calls) == len(grid) + 1


@pytest.mark.parametrize("steps", [1000, 5000])
def test_too_many_ldm_steps_are_one_line_naming_the_range(steps):
    with pytest.raises(UserError, match=r"steps must be an integer in \[1, (999|1000)\]") as err:
        make_sampler("plms", GaussianDiffusion("linear", 1000), steps=steps, spacing="ldm")
    assert "\n" not in str(err.value)
    if steps == 1000:
        assert "[1, 999] for the ldm spacing" in str(err.value)
