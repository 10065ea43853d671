"""Times every fused op against its reference in one run and prints a markdown table.

    python bench/report_ops.py [--device cpu|cuda] [--quick]

For every case of ``op_cases`` (the issue's sizes, or smaller ones with ``--quick``): builds
fresh random inputs once, warms both implementations up (their outputs are compared, so a
wrong op is flagged), then times them interleaved, fused and reference alternating in order,
and reports the medians. Peak memory is measured for the ops whose target includes it
(``memory.py``: a fresh subprocess per case on CPU, the caching allocator's peak on CUDA).
For the memory-bound ops the achieved bandwidth (inputs read once + outputs written, over the
fused median) is printed next to a measured device copy bandwidth (bytes read + written).

Targets: spatial_max_topk, masked_pool, upsample_iou and the quantile sketch update at least
3x faster than the reference; attention_pool and cosine_topk at least as fast and at most a
tenth of the reference's peak memory. On a CPU, spatial_max_topk and masked_pool also against
their best plain-PyTorch composition (``op_cases``: amax then a topk merge; interpolate then
bmm), timed in the same interleaved rounds: at least 2x faster and at 60 % of the copy bandwidth.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import memory
import op_cases
import torch
from tqdm import tqdm

import lavise_fast
from lavise_fast import ops


@dataclass
class Row:
    spec: op_cases.CaseSpec
    fused_ms: list[float] = field(default_factory=list)
    reference_ms: list[float] = field(default_factory=list)
    composition_ms: list[float] = field(default_factory=list)  # empty: the reference is the composition
    reference_error: str | None = None  # e.g. out of memory: not timed
    check: str = "ok"  # outcome of comparing fused and reference outputs
    memory: dict[str, memory.PeakMemory] | None = None
    bytes_moved: int = 0

    @property
    def fused_median(self) -> float:
        return statistics.median(self.fused_ms)

    @property
    def reference_median(self) -> float | None:
        return statistics.median(self.reference_ms) if self.reference_ms else None

    @property
    def composition_median(self) -> float | None:
        """The best plain-PyTorch composition's median: its own, else the reference's."""
        return statistics.median(self.composition_ms) if self.composition_ms else self.reference_median

    @property
    def vs_composition(self) -> float | None:
        comp = self.composition_median
        return None if comp is None else comp / self.fused_median

    def bandwidth_share(self, copy_gbs: float) -> float:
        """Achieved GB/s of the fused op (inputs read once + outputs written) over the copy's."""
        return self.bytes_moved / (self.fused_median * 1e-3) / 1e9 / copy_gbs

    @property
    def speedup(self) -> float | None:
        ref = self.reference_median
        return None if ref is None else ref / self.fused_median

    @property
    def memory_ratio(self) -> float | None:
        if not self.memory:
            return None
        fused, ref = self.memory["fused"].bytes, self.memory["reference"].bytes
        if fused is None or not ref:
            return None
        return fused / ref


def machine_lines(device: torch.device) -> list[str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores, torch threads: {torch.get_num_threads()}",
    ]
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        lines[-1] += f", load average at start: {load}"
    except OSError:
        pass
    if torch.cuda.is_available():
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
        lines.append(f"- GPU: {', '.join(names)} (CUDA {torch.version.cuda})")
    else:
        lines.append("- GPU: none")
    lines.append(
        f"- torch {torch.__version__}, lavise_fast {lavise_fast.__version__} "
        f"(CUDA kernels: {'yes' if ops.has_cuda_kernels() else 'no'}), Python {platform.python_version()}"
    )
    lines.append(f"- device benchmarked: {device}")
    return lines


def copy_bandwidth(device: torch.device, nbytes: int = 2**28, repeats: int = 10) -> float:
    """Bytes read + written per second by a large ``Tensor.copy_`` on the device (median)."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 2):
        op_cases.synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        op_cases.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(times)


def _time_calls(case: op_cases.Case, impl: str, calls: int) -> float:
    """Mean seconds per call over ``calls`` calls, each on fresh args and synchronised."""
    run = case.timed(impl)
    arg_sets = [case.args() for _ in range(calls)]
    start = time.perf_counter()
    for args in arg_sets:
        run(*args)
    return (time.perf_counter() - start) / calls


def measure(
    spec: op_cases.CaseSpec,
    device: torch.device,
    *,
    scale: str,
    repeats: int,
    min_repeats: int,
    budget_s: float,
    with_memory: bool,
) -> Row:
    case = op_cases.build(spec, device)
    row = Row(spec, bytes_moved=case.bytes_moved)
    # Warm-up, one call each (a few on a GPU); the outputs are compared.
    warmups = 3 if device.type == "cuda" else 1
    fused_out = case.result("fused")
    last_fused = 0.0
    for _ in range(warmups - 1):
        start = time.perf_counter()
        case.result("fused")
        last_fused = time.perf_counter() - start
    last_ref = 0.0
    try:
        ref_out = case.result("reference")
        for _ in range(warmups - 1):
            start = time.perf_counter()
            case.result("reference")
            last_ref = time.perf_counter() - start
    except torch.OutOfMemoryError:
        row.reference_error = "OOM"
        ref_out = None
    last_comp = 0.0
    try:
        if ref_out is not None:
            case.compare(fused_out, ref_out)
        else:
            case.light_check("fused", fused_out)
        if case.composition is not None:
            case.compare(case.result(op_cases.COMPOSITION), fused_out)
            start = time.perf_counter()
            case.result(op_cases.COMPOSITION)
            last_comp = time.perf_counter() - start
    except AssertionError as error:
        row.check = f"MISMATCH: {str(error).splitlines()[0][:120]}"
    del fused_out, ref_out
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # Sub-millisecond calls are timed in batches of calls, so that a sample is ~1 ms or more.
    calls = {
        impl: max(1, min(100, int(1e-3 / max(last, 1e-6)))) if device.type == "cuda" else 1
        for impl, last in (("fused", last_fused), ("reference", last_ref), (op_cases.COMPOSITION, last_comp))
    }
    impls = ["fused"] if row.reference_error else ["fused", "reference"]
    if case.composition is not None:
        impls.append(op_cases.COMPOSITION)
    times = {"fused": row.fused_ms, "reference": row.reference_ms, op_cases.COMPOSITION: row.composition_ms}
    spent = time.perf_counter()
    for i in range(repeats):
        order = impls if i % 2 == 0 else impls[::-1]
        for impl in order:
            ms = 1e3 * _time_calls(case, impl, calls[impl])
            times[impl].append(ms)
        if i + 1 >= min_repeats and time.perf_counter() - spent > budget_s:
            break

    if with_memory and spec.op in op_cases.MEMORY_TARGET_OPS:
        if device.type == "cuda":
            row.memory = memory.peak_memory(spec, "cuda", scale=scale, case=case)
        else:
            del case
            gc.collect()
            row.memory = memory.peak_memory(spec, "cpu", scale=scale)
    return row


def _fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _fmt_mib(m: memory.PeakMemory) -> str:
    return m.error if m.bytes is None else f"{m.bytes / 2**20:.1f}"


def verdict(row: Row) -> tuple[str, str]:
    """(target, met/missed with the shortfall) of a row."""
    op = row.spec.op
    speed_target = op_cases.SPEEDUP_TARGET[op]
    if op in op_cases.MEMORY_TARGET_OPS:
        target = f">= {speed_target:g}x, mem <= {op_cases.MEMORY_RATIO_TARGET:g}x"
    else:
        target = f">= {speed_target:g}x"
    if row.check != "ok":
        return target, f"**wrong result** ({row.check})"
    misses, unknown = [], []
    speedup = row.speedup
    if speedup is None:
        if row.reference_error is None:
            unknown.append("no reference time")
    elif speedup < speed_target:
        misses.append(f"speed {speedup:.3g}x < {speed_target:g}x")
    if op in op_cases.MEMORY_TARGET_OPS:
        ratio = row.memory_ratio
        ref_mem = row.memory["reference"] if row.memory else None
        if ratio is None:
            if not (ref_mem is not None and ref_mem.error and "OOM" in ref_mem.error):
                unknown.append("memory not measured")
        elif ratio > op_cases.MEMORY_RATIO_TARGET:
            misses.append(f"memory {ratio:.3f}x > {op_cases.MEMORY_RATIO_TARGET:g}x")
    if misses:
        return target, "**missed**: " + "; ".join(misses + unknown)
    if unknown:
        return target, "met so far (" + "; ".join(unknown) + ")"
    return target, "met"


def bandwidth_verdict(row: Row, copy_gbs: float, device: torch.device) -> str:
    """The issue-13 targets of the CPU's memory-bound ops, or "-" where they do not apply."""
    if device.type != "cpu" or row.spec.op not in op_cases.BANDWIDTH_TARGET_OPS or row.check != "ok":
        return "-"
    misses = []
    if (row.vs_composition or 0.0) < op_cases.COMPOSITION_TARGET:
        misses.append(f"{row.vs_composition:.2f}x < {op_cases.COMPOSITION_TARGET:g}x")
    share = row.bandwidth_share(copy_gbs)
    if share < op_cases.BANDWIDTH_TARGET:
        misses.append(f"{100 * share:.1f}% < {100 * op_cases.BANDWIDTH_TARGET:.0f}%")
    return "**missed**: " + "; ".join(misses) if misses else "met"


def table(rows: list[Row], copy_gbs: float, device: torch.device) -> list[str]:
    header = [
        "op",
        "size",
        "fused ms",
        "reference ms",
        "speed-up",
        "best composition ms (speed-up)",
        "peak MiB fused / ref (ratio)",
        f"GB/s fused (copy {copy_gbs:.0f})",
        "target",
        "result",
        f"CPU target: >= {op_cases.COMPOSITION_TARGET:g}x composition, >= {100 * op_cases.BANDWIDTH_TARGET:.0f}% copy",
    ]
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        ref = _fmt_ms(row.reference_median) if row.reference_error is None else f"{row.reference_error}"
        speed = "-" if row.speedup is None else f"{row.speedup:.2f}x"
        if row.speedup is None and row.reference_error:
            speed = f"ref {row.reference_error}"
        comp = "-"
        if row.vs_composition is not None:
            comp = f"{_fmt_ms(row.composition_median)} ({row.vs_composition:.2f}x)"
            comp += "" if row.composition_ms else " (the reference)"
        mem = "-"
        if row.memory:
            f, r = row.memory["fused"], row.memory["reference"]
            mem = f"{_fmt_mib(f)} / {_fmt_mib(r)}"
            if row.memory_ratio is not None:
                mem += f" ({row.memory_ratio:.3f}x)"
        gbs = "-"
        if row.spec.op in op_cases.MEMORY_BOUND_OPS:
            share = row.bandwidth_share(copy_gbs)
            gbs = f"{share * copy_gbs:.3g} ({100 * share:.2g}%)"
        target, result = verdict(row)
        cells = [
            row.spec.label,
            row.spec.size,
            _fmt_ms(row.fused_median),
            ref,
            speed,
            comp,
            mem,
            gbs,
            target,
            result,
            bandwidth_verdict(row, copy_gbs, device),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (the 'quick' scale), for a CPU")
    parser.add_argument("--scale", choices=sorted(op_cases.SCALES), default=None, help="overrides --quick")
    parser.add_argument("--repeats", type=int, default=7, help="most timed runs per implementation (default 7)")
    parser.add_argument("--min-repeats", type=int, default=3, help="fewest timed runs per implementation")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timing per case before stopping early")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--op", action="append", choices=op_cases.OPS, help="only these ops (repeatable)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)

    device_name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_name == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device available")
        if not ops.has_cuda_kernels():
            parser.error("--device cuda: this build of lavise_fast has no CUDA kernels")
    device = torch.device(device_name, torch.cuda.current_device()) if device_name == "cuda" else torch.device("cpu")
    scale = args.scale or ("quick" if args.quick else "full")
    budget = args.budget if args.budget is not None else (4.0 if device.type == "cuda" else 6.0)
    torch.set_grad_enabled(False)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the memory subprocesses follow

    started = time.perf_counter()
    specs = [s for s in op_cases.specs(scale, device.type) if not args.op or s.op in args.op]
    copy_gbs = copy_bandwidth(device) / 1e9
    rows = []
    bar = tqdm(specs, desc="report_ops", file=sys.stderr, disable=args.no_progress)
    for spec in bar:
        bar.set_postfix_str(spec.id)
        rows.append(
            measure(
                spec,
                device,
                scale=scale,
                repeats=args.repeats,
                min_repeats=min(args.min_repeats, args.repeats),
                budget_s=budget,
                with_memory=not args.no_memory,
            )
        )
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    elapsed = time.perf_counter() - started

    print(f"## lavise_fast operators: fused vs reference ({scale} sizes, {device})\n")
    print("\n".join(machine_lines(device)))
    print(
        f"- method: medians of {args.min_repeats}-{args.repeats} interleaved timed calls after warm-up "
        f"(device synchronised in each call); peak memory "
        + (
            "by torch.cuda.max_memory_allocated above the inputs"
            if device.type == "cuda"
            else "by VmHWM - VmRSS around one call in a fresh process"
        )
        + f"; copy bandwidth = bytes read + written by a 256 MiB copy_: {copy_gbs:.1f} GB/s"
    )
    print(f"- total run time: {elapsed:.0f} s\n")
    print("\n".join(table(rows, copy_gbs, device)))
    missed = [r for r in rows if verdict(r)[1] != "met"]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} cases meet their target.")
    if device.type == "cpu":
        bandwidth = [r for r in rows if bandwidth_verdict(r, copy_gbs, device) != "-"]
        met = [r for r in bandwidth if bandwidth_verdict(r, copy_gbs, device) == "met"]
        print(f"{len(met)} of {len(bandwidth)} memory-bound cases meet the CPU targets (composition and bandwidth).")
    return 0 if all(r.check == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
