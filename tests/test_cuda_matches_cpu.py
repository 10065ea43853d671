"""The CUDA kernels against the CPU kernels, on the same random inputs.

Both devices share their math (csrc/ops/*.h, nvcc with --fmad=false), so integer
outputs, indices and the top-image lists must be identical, and pooled floats equal up to
summation order. Skipped without a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from lavise_fast import ops

pytestmark = pytest.mark.cuda

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def both(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    return list(tensors), [t.cuda() for t in tensors]


@pytest.mark.parametrize("dtype", DTYPES)
def test_spatial_max_topk(dtype):
    x = torch.randn(37, 129, 9, 11).to(dtype)
    x[3, 5] = math.nan
    cpu_state = [torch.full((129, 25), -math.inf), torch.full((129, 25), -1, dtype=torch.long)]
    gpu_state = [t.cuda() for t in cpu_state]
    for start in range(0, 37, 10):
        chunk = x[start : start + 10]
        m_cpu = ops.spatial_max_topk(chunk, *cpu_state, start)
        m_gpu = ops.spatial_max_topk(chunk.cuda(), *gpu_state, start)
        assert torch.equal(m_cpu, m_gpu.cpu()) or torch.allclose(m_cpu, m_gpu.cpu(), equal_nan=True)
    assert torch.equal(cpu_state[0], gpu_state[0].cpu())
    assert torch.equal(cpu_state[1], gpu_state[1].cpu())


@pytest.mark.parametrize("mode", ["projection", "activation"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_pool(mode, dtype):
    x = torch.randn(17, 300, 14, 14).to(dtype)
    rows, filters = torch.randint(0, 17, (900,)), torch.randint(0, 300, (900,))
    t = torch.randn(300) + 1
    args = (rows, filters, mode, t if mode == "activation" else None)
    out_cpu = ops.attention_pool(x, *args)
    out_gpu = ops.attention_pool(x.cuda(), *(a.cuda() if isinstance(a, torch.Tensor) else a for a in args))
    assert_close(out_gpu.cpu(), out_cpu, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.float32])
def test_masked_pool(mask_dtype):
    x = torch.randn(9, 257, 7, 7)
    masks = (torch.rand(40, 223, 171) < 0.3).to(mask_dtype)
    rows = torch.randint(0, 9, (40,))
    assert_close(ops.masked_pool(x.cuda(), masks.cuda(), rows.cuda()).cpu(), ops.masked_pool(x, masks, rows))


@pytest.mark.parametrize("dtype", DTYPES)
def test_upsample_iou(dtype):
    x = torch.randn(6, 70, 7, 9).to(dtype)
    t = torch.randn(70) * 0.5 + 1
    masks = torch.rand(13, 113, 97) < 0.4
    rows = torch.randint(0, 6, (13,))
    cpu = ops.upsample_iou(x, t, masks, rows)
    gpu = ops.upsample_iou(x.cuda(), t.cuda(), masks.cuda(), rows.cuda())
    assert torch.equal(cpu[0], gpu[0].cpu()) and torch.equal(cpu[1], gpu[1].cpu())


def test_cosine_topk():
    q, keys = torch.randn(700, 64), torch.randn(90_001, 64)
    keys[50_000] = keys[10]  # a tie across chunks goes to the smaller index on both devices
    cpu = ops.cosine_topk(q, keys, 20)
    gpu = ops.cosine_topk(q.cuda(), keys.cuda(), 20)
    assert_close(gpu[0].cpu(), cpu[0], rtol=1e-5, atol=1e-6)
    # Indices agree wherever the similarities are not within rounding of each other.
    agree = (gpu[1].cpu() == cpu[1]).float().mean()
    assert agree > 0.999


@pytest.mark.parametrize("dtype", DTYPES)
def test_quantile_sketch(dtype):
    C, cap = 33, 128
    state_cpu = [torch.zeros(C, cap, dtype=torch.float64), torch.zeros(C, cap, dtype=torch.float64)]
    summary = torch.zeros(C, 4, dtype=torch.float64)
    summary[:, 2], summary[:, 3] = math.inf, -math.inf
    state_cpu.append(summary)
    state_gpu = [t.cuda() for t in state_cpu]
    for _ in range(6):
        x = (torch.randn(11, C, 6, 5) * 3).exp().to(dtype)
        ops.quantile_sketch_update(x, *state_cpu)
        ops.quantile_sketch_update(x.cuda(), *state_gpu)
    assert torch.equal(state_cpu[1], state_gpu[1].cpu())  # same centroid structure
    assert_close(state_gpu[0].cpu(), state_cpu[0], rtol=1e-12, atol=0)
    assert torch.equal(state_cpu[2], state_gpu[2].cpu())
