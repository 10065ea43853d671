"""Shared test setup: the device parametrisation, the `cuda` skip, a per-test seed and the
hypothesis profiles.

Every test that runs an operator takes the ``device`` fixture, so it runs once per entry of
``DEVICES``; the CUDA entry carries the ``cuda`` marker and is skipped where no GPU (or no
CUDA build of ``lavise_fast._C``) is available.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import zlib

import pytest
import torch
from hypothesis import settings

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# What the package caches (word embeddings, default explainers) goes to a folder of this run,
# never to the user's home; the model hub is never asked.
# The folder is removed when the run ends, so repeated runs do not fill /tmp.
_TEST_CACHE = tempfile.mkdtemp(prefix="lavise_fast_test_cache_")
os.environ["LAVISE_FAST_CACHE"] = _TEST_CACHE
atexit.register(shutil.rmtree, _TEST_CACHE, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Hypothesis profiles for the property tests (tests/test_ops_properties.py), chosen with the
# environment variable HYPOTHESIS_PROFILE: "ci" (the default: a modest search that keeps the
# suite fast), "dev" (a longer search) and "thorough" (for a hunt, minutes per test). No deadline:
# the first call of an op may be slow (thread pools, CUDA context). A failure prints the blob
# that replays it (@reproduce_failure); found examples are kept in .hypothesis/ (not committed).
settings.register_profile("ci", max_examples=25, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=200, deadline=None, print_blob=True)
settings.register_profile("thorough", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _cuda_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "CUDA is not available (torch.cuda.is_available() is False)"
    from lavise_fast import ops

    if not ops.has_cuda_kernels():
        return "lavise_fast._C was built without CUDA kernels (lavise_fast.ops.has_cuda_kernels() is False)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _cuda_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """The device a test runs its operators on: every test taking it runs on CPU and CUDA."""
    return request.param


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    """A fixed seed per test (derived from its id), so that every failure reproduces."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
