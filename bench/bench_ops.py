"""pytest-benchmark suite: every fused op of lavise_fast against its plain-PyTorch reference.

Each group ``"<op> <size> <device>"`` holds two benchmarks, ``fused`` (``lavise_fast.ops``) and
``reference`` (``lavise_fast._reference``), on the same fresh random inputs (``op_cases``).
Inputs are built once per benchmark, outside the timed function; state the op mutates is
copied afresh by the setup of every round; the timed function synchronises the device.
After timing, the result is checked against the other implementation on a cheap subset of
the inputs, so that a broken op fails here too.

    pytest bench/bench_ops.py                        # the issue's sizes (slow on a CPU)
    pytest bench/bench_ops.py --bench-scale quick    # smaller, same layer shapes
    pytest bench/bench_ops.py --benchmark-disable    # CI: each body once, smoke sizes
"""

from __future__ import annotations

import time

import op_cases
import pytest
import torch

DEVICES = ("cpu", "cuda")
ROUND_BUDGET_S = 3.0  # timed rounds per benchmark aim at about this many seconds ...
MIN_ROUNDS, MAX_ROUNDS = 3, 30  # ... within these bounds,
LONG_CALL_S = 10.0  # except a single round for calls longer than this.


def bench_scale(config: pytest.Config) -> str:
    """The scale that ``--bench-scale`` (see conftest.py) resolves to."""
    scale = config.getoption("bench_scale")
    if scale == "auto":
        return "smoke" if config.getoption("benchmark_disable", default=False) else "full"
    return scale


def _param_id(spec: op_cases.CaseSpec, device: str) -> str:
    parts = [spec.variant] if spec.variant else []
    return "-".join([*parts, spec.size.replace(" ", "-"), device])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "spec" not in metafunc.fixturenames:
        return
    op = metafunc.function.__name__.removeprefix("test_")
    scale = bench_scale(metafunc.config)
    params = []
    for device in DEVICES:
        for spec in op_cases.specs(scale, device, op):
            marks = [pytest.mark.benchmark(group=f"{spec.label} {spec.size} {device}")]
            if device == "cuda":
                marks.append(pytest.mark.cuda)
            params.append(pytest.param(spec, device, id=_param_id(spec, device), marks=marks))
    metafunc.parametrize(("spec", "device"), params)


def _rounds(case: op_cases.Case, impl: str) -> int:
    """Rounds for pedantic, from one untimed-by-pytest probe call (which also warms up)."""
    args = case.args()
    start = time.perf_counter()
    case.timed(impl)(*args)
    elapsed = time.perf_counter() - start
    if elapsed > LONG_CALL_S:
        return 1
    return max(MIN_ROUNDS, min(MAX_ROUNDS, int(ROUND_BUDGET_S / max(elapsed, 1e-6))))


def _bench(benchmark, spec: op_cases.CaseSpec, device: str, impl: str) -> None:
    case = op_cases.build(spec, device)
    benchmark.extra_info.update(op=spec.label, size=spec.size, impl=impl, bytes_moved=case.bytes_moved)
    last_args: list[tuple] = []

    def setup() -> tuple[tuple, dict]:
        last_args[:] = [case.args()]
        return last_args[0], {}

    try:
        rounds = 1 if benchmark.disabled else _rounds(case, impl)
    except torch.OutOfMemoryError:
        pytest.skip(f"{impl} runs out of device memory at {spec.size}")
    out = benchmark.pedantic(case.timed(impl), setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
    case.light_check(impl, case.outputs(last_args[0], out))


@pytest.mark.parametrize("impl", op_cases.IMPLS)
def test_spatial_max_topk(benchmark, spec, device, impl):
    _bench(benchmark, spec, device, impl)


@pytest.mark.parametrize("impl", op_cases.IMPLS)
def test_attention_pool(benchmark, spec, device, impl):
    _bench(benchmark, spec, device, impl)


@pytest.mark.parametrize("impl", op_cases.IMPLS)
def test_masked_pool(benchmark, spec, device, impl):
    _bench(benchmark, spec, device, impl)


@pytest.mark.parametrize("impl", op_cases.IMPLS)
def test_upsample_iou(benchmark, spec, device, impl):
    _bench(benchmark, spec, device, impl)


@pytest.mark.parametrize("impl", op_cases.IMPLS)
def test_quantile_sketch_update(benchmark, spec, device, impl):
    _bench(benchmark, spec, device, impl)


@pytest.mark.parametrize("impl", op_cases.IMPLS)
def test_cosine_topk(benchmark, spec, device, impl):
    _bench(benchmark, spec, device, impl)
