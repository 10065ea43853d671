"""Peak memory of one call of a benchmark case (fused op or its reference).

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, in this process,
minus what was allocated before the call (inputs); outputs count.

CPU: torch's CPU allocator is plain malloc, so the measure is the resident set of a fresh
subprocess per case: it warms the implementations up on a tiny case of the same op (so that
code pages and thread pools are already resident), builds the case's inputs, then for each
implementation in turn (fused first) returns freed heap to the system (``malloc_trim``),
resets the kernel's high-water mark (``/proc/self/clear_refs``), makes the call and takes
``VmHWM`` minus the ``VmRSS`` just before the call. Where ``clear_refs`` cannot be written
the fallback is the growth of ``getrusage(RUSAGE_SELF).ru_maxrss``, which under-estimates a
peak lower than an earlier one.

Usage from code: ``peak_memory(spec, "cpu", scale="quick")`` -> ``{"fused": PeakMemory, "reference": ...}``.
As a script (what the CPU path runs): ``python bench/memory.py SCALE CASE_ID IMPL...`` prints JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import op_cases
import torch

_BENCH_DIR = Path(__file__).resolve().parent
_REPO_ROOT = _BENCH_DIR.parent


@dataclass(frozen=True)
class PeakMemory:
    """Peak bytes above the inputs during one call; ``error`` says why there is none (e.g. OOM)."""

    bytes: int | None
    method: str
    error: str | None = None

    @property
    def mib(self) -> float | None:
        return None if self.bytes is None else self.bytes / 2**20


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _tiny_spec(spec: op_cases.CaseSpec) -> op_cases.CaseSpec:
    same_op = [s for s in op_cases.specs("smoke", "cpu", spec.op) if s.variant == spec.variant]
    return same_op[0]


def measure_cpu_in_this_process(spec: op_cases.CaseSpec, impls: tuple[str, ...]) -> dict[str, PeakMemory]:
    """The CPU measure, for a fresh process (see :func:`peak_memory`), of each impl in turn.

    Put the fused op first: it then runs in a pristine process. A later impl may reuse heap
    that an earlier one freed and malloc_trim could not return, which can only lower its
    measure; with the reference second, the fused/reference ratio errs on the high side.
    """
    torch.set_grad_enabled(False)
    warm = op_cases.build(_tiny_spec(spec), "cpu")
    for impl in impls:
        for _ in range(2):
            warm.result(impl)
    del warm
    case = op_cases.build(spec, "cpu")
    results = {}
    for impl in impls:
        fn = case.impl(impl)
        args = case.args()
        gc.collect()
        _malloc_trim()
        if _reset_high_water_mark():
            before = _status_kib("VmRSS")
            out = fn(*args)
            peak = _status_kib("VmHWM")
            method = "VmHWM - VmRSS, fresh process"
        else:
            before = max(_status_kib("VmRSS"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            out = fn(*args)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            method = "ru_maxrss growth, fresh process"
        del out, args
        results[impl] = PeakMemory(max(0, peak - before) * 1024, method)
    return results


def measure_cuda(case: op_cases.Case, impl: str) -> PeakMemory:
    """Peak bytes allocated by torch on the case's GPU during one call, above its inputs."""
    device = case.device
    fn = case.impl(impl)
    method = "torch.cuda.max_memory_allocated"
    try:
        args = case.args()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn(*args)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del out, args
    except torch.OutOfMemoryError:
        free, total = torch.cuda.mem_get_info(device)
        return PeakMemory(None, method, f"OOM (> {total / 2**30:.0f} GiB)")
    finally:
        gc.collect()
        torch.cuda.empty_cache()
    return PeakMemory(peak - before, method)


def peak_memory(
    spec: op_cases.CaseSpec,
    device: str = "cpu",
    *,
    scale: str,
    impls: tuple[str, ...] = op_cases.IMPLS,
    case: op_cases.Case | None = None,
    timeout_s: float = 900.0,
) -> dict[str, PeakMemory]:
    """Peak memory of one call of each of ``impls`` ("fused", "reference") of the case ``spec``.

    CPU: in one fresh subprocess, the impls in the given order (``scale`` names the spec's
    scale there). CUDA: in this process, on ``case`` when given (its inputs are reused) or on
    a freshly built one.
    """
    for impl in impls:
        if impl not in op_cases.IMPLS:
            raise ValueError(f"impls must be among {op_cases.IMPLS}, got {impl!r}")
    if device == "cuda":
        case = case if case is not None else op_cases.build(spec, "cuda")
        return {impl: measure_cuda(case, impl) for impl in impls}
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), scale, spec.id, *impls]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {impl: PeakMemory(None, "subprocess", f"timed out after {timeout_s:.0f} s") for impl in impls}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        reason = "killed (out of memory?)" if proc.returncode < 0 else f"exit {proc.returncode}"
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
        return {impl: PeakMemory(None, "subprocess", f"{reason}: {tail}") for impl in impls}
    data = json.loads(lines[-1])
    return {impl: PeakMemory(d["bytes"], d["method"], d["error"]) for impl, d in data.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Peak CPU memory of one call of a benchmark case (prints JSON).")
    parser.add_argument("scale", choices=sorted(op_cases.SCALES))
    parser.add_argument("case_id", help="a case id, e.g. 'cosine_topk-1280x20000x300-k=20'")
    parser.add_argument("impls", nargs="+", choices=op_cases.IMPLS, help="measured in this order")
    args = parser.parse_args(argv)
    spec = op_cases.find_spec(args.scale, args.case_id, "cpu")
    results = measure_cpu_in_this_process(spec, tuple(args.impls))
    print(json.dumps({impl: {"bytes": r.bytes, "method": r.method, "error": r.error} for impl, r in results.items()}))


if __name__ == "__main__":
    main()
