"""pytest configuration of the operator benchmarks.

``--bench-scale`` picks the sizes (see ``op_cases.SCALES``): ``auto`` (the default) means
``smoke`` under ``--benchmark-disable`` (CI runs every benchmark body once, quickly) and
``full`` otherwise. Cases marked ``cuda`` are skipped without a GPU or without the CUDA
kernels in this build of lavise_fast. ``bench_*.py`` files are collected as test modules, so
that ``pytest bench`` (the Makefile's ``bench-check`` and ``bench`` targets) finds them.
"""

from __future__ import annotations

from pathlib import Path

import op_cases
import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-scale",
        choices=("auto", *sorted(op_cases.SCALES)),
        default="auto",
        help="benchmark sizes: full (the issue's), quick, smoke; auto = smoke with --benchmark-disable, else full",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # A file named on the command line is collected by pytest itself; do not collect it twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _cuda_unavailable() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    from lavise_fast import ops

    if not ops.has_cuda_kernels():
        return "lavise_fast was built without its CUDA kernels"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _cuda_unavailable()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
