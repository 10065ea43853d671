"""Vocabulary scoring at GloVe scale: ``lavise_fast.ops.cosine_topk`` against a full sort.

    PYTHONPATH=. python bench/vocabulary.py                          # 400,000 words x 300 dims, 12,800 queries
    PYTHONPATH=. python bench/vocabulary.py --queries 1280 --baseline-chunks 1   # a few minutes on 2 cores
    PYTHONPATH=. python bench/vocabulary.py --words 2000 --queries 64 --chunk 16 --no-memory   # seconds
    PYTHONPATH=. python bench/vocabulary.py --append-results         # also append to RESULTS.md

Settings (defaults): 400,000 random words of dimension 300 (GloVe 6B's size) and 12,800 random
queries (512 filters x 25 top images: the head's outputs of a ResNet-18 ``layer4`` sweep), both
standard normal and seeded; k = 5 (s, the words each top image votes for) and 20.

- ``cosine_topk``: ``lavise_fast.ops.cosine_topk(queries, words, k)`` over all queries at once
  (it scans the words in chunks and never holds the R x V similarities);
- ``full sort``: what the official code does per image, ``mm(q, E) / mm(|q|, |E|)`` against ALL
  the words (the word norms recomputed per chunk, as the official code recomputes them per
  image) then ``torch.sort`` of each whole row, keeping the first k. The official code does one
  row (one image) at a time; here the queries go in chunks of ``--chunk`` rows (256) so that the
  baseline fits in memory (a chunk's similarities, sorted values and int64 indices: 256 x
  400,000 x 16 bytes = 1.6 GB, plus the temporaries of the division), and all 12,800 rows at
  once would need 82 GB. The sort does not depend on k, so one run serves both k.

Time: in one run, interleaved (cosine_topk for each k, then the full sort), ``--repeats`` times
each after a warm-up on a few queries; ``cosine_topk`` over all queries, the full sort over
``--baseline-chunks`` chunks (a seeded sample) and EXTRAPOLATED linearly to all the chunks (every
chunk costs the same), which the table says. ``--baseline-chunks 0`` sorts every chunk.
Check: on the sampled chunks, the indices of ``cosine_topk`` against the first k of the sort.
Peak memory: one fresh subprocess per side (this script with ``--memory-probe SIDE``), above the
words and queries made before (``e2e_common.PeakMemoryProbe``); the full sort's probe sorts
``min(2, chunks)`` chunks (its peak is one chunk's, whatever the number of chunks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import e2e_common as common
import torch

from lavise_fast import ops

SIDES = ("cosine_topk", "sort")


def build_parser() -> argparse.ArgumentParser:
    parser = common.script_parser(
        "Times lavise_fast.ops.cosine_topk against a full sort of the similarities at GloVe scale "
        "(the sort on a sample of query chunks, extrapolated), measures both peaks; prints one table.",
        __doc__,
    )
    parser.add_argument("--words", type=int, default=400_000, help="V, random words [%(default)s]")
    parser.add_argument("--dim", type=int, default=300, help="D, their dimension [%(default)s]")
    parser.add_argument("--queries", type=int, default=12_800, help="R, random queries [%(default)s]")
    parser.add_argument("--k", type=int, nargs="+", default=[5, 20], help="words kept per query [5 20]")
    parser.add_argument("--chunk", type=int, default=256, help="queries per chunk of the full sort [%(default)s]")
    parser.add_argument(
        "--baseline-chunks", type=int, default=4,
        help="chunks the full sort is timed on (seeded sample, extrapolated to all); 0 = all [%(default)s]",
    )
    common.add_common_arguments(parser, seeds="the words and queries", repeats=1, memory_probe={"choices": SIDES})
    return parser


def make_inputs(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries [R, D], words [V, D]): seeded standard normal, on the device."""
    generator = torch.Generator().manual_seed(args.seed)
    words = torch.randn(args.words, args.dim, generator=generator)
    queries = torch.randn(args.queries, args.dim, generator=generator)
    return queries.to(device), words.to(device)


def chunk_starts(args: argparse.Namespace) -> list[int]:
    return list(range(0, args.queries, args.chunk))


def sampled_chunks(args: argparse.Namespace, count: int | None = None) -> list[int]:
    """The start rows of the sampled chunks (seeded, sorted); all chunks for ``count`` 0."""
    starts = chunk_starts(args)
    count = args.baseline_chunks if count is None else count
    if count == 0 or count >= len(starts):
        return starts
    generator = torch.Generator().manual_seed(args.seed + 1)
    return sorted(starts[i] for i in torch.randperm(len(starts), generator=generator)[:count].tolist())


def full_sort(queries: torch.Tensor, words: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The official scoring of a chunk of queries [r, D]: cosine against all the words, the whole row
    sorted, the first ``k`` kept; (values [r, k], indices [r, k])."""
    E = words.t()
    score = torch.mm(queries, E) / torch.mm(
        torch.sqrt(torch.sum(queries**2, dim=1, keepdim=True)), torch.sqrt(torch.sum(E**2, dim=0, keepdim=True))
    )
    values, indices = torch.sort(score, dim=1, descending=True)
    return values[:, :k].clone(), indices[:, :k].clone()


def sort_chunks(queries: torch.Tensor, words: torch.Tensor, starts: list[int], chunk: int,
                k: int) -> list[torch.Tensor]:
    """The first ``k`` indices of the full sort of each chunk starting at ``starts``."""
    return [full_sort(queries[s : s + chunk], words, k)[1] for s in starts]


def time_interleaved(args: argparse.Namespace, queries: torch.Tensor, words: torch.Tensor,
                     device: torch.device) -> dict:
    """Seconds of each side per repeat, and the index check of the sampled chunks."""
    starts = sampled_chunks(args)
    kmax = max(args.k)
    few = queries[: min(8, args.queries)]
    for k in args.k:  # warm-up
        ops.cosine_topk(few, words, k)
    full_sort(few, words, kmax)
    fused: dict[int, list[float]] = {k: [] for k in args.k}
    indices: dict[int, torch.Tensor] = {}
    sort_s: list[float] = []
    sorted_idx: list[torch.Tensor] = []
    for _ in range(args.repeats):
        for k in args.k:
            seconds, (_, indices[k]) = common.timed(lambda k=k: ops.cosine_topk(queries, words, k), device)
            fused[k].append(seconds)
        seconds, sorted_idx = common.timed(lambda: sort_chunks(queries, words, starts, args.chunk, kmax), device)
        sort_s.append(seconds)
    checks = {}
    for k in args.k:
        same = rows = 0
        for s, idx in zip(starts, sorted_idx, strict=True):
            got = indices[k][s : s + args.chunk].cpu()
            same += int((got == idx[:, :k].cpu()).all(1).sum())
            rows += got.shape[0]
        checks[k] = (same, rows)
    return {"fused": fused, "sort": sort_s, "starts": starts, "checks": checks}


# --- peak memory ------------------------------------------------------------------------------


def probe_memory(args: argparse.Namespace, device: torch.device) -> dict:
    """In this process: the peak memory of one side above its inputs."""
    queries, words = make_inputs(args, device)
    side, kmax = args.memory_probe, max(args.k)
    few = queries[: min(8, args.queries)]
    starts = sampled_chunks(args, min(2, len(chunk_starts(args))))
    if side == "cosine_topk":
        ops.cosine_topk(few, words, kmax)
        with common.PeakMemoryProbe(device) as peak:
            ops.cosine_topk(queries, words, kmax)
    else:
        full_sort(few, words, kmax)
        with common.PeakMemoryProbe(device) as peak:
            sort_chunks(queries, words, starts, args.chunk, kmax)
    return {"side": side, "bytes": peak.bytes, "method": peak.method, "chunks": len(starts)}


def memory_subprocess(args: argparse.Namespace, side: str, device: torch.device, timeout_s: float = 1800) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", side, "--device", device.type,
           "--k", *[str(k) for k in args.k]]
    cmd += common.forwarded_options(args, ("words", "dim", "queries", "chunk", "seed", "threads"))
    return {"side": side} | common.json_subprocess(cmd, timeout_s)


# --- the report -------------------------------------------------------------------------------


def _spread(values: list[float]) -> str:
    return f"{common.fmt_s(common.median(values))} (min {common.fmt_s(min(values))}, max {common.fmt_s(max(values))})"


def report(args: argparse.Namespace, device: torch.device, timings: dict,
           memories: dict[str, dict] | None) -> tuple[list[str], list[str]]:
    """(table lines, notes) of the run."""
    R, V, D = args.queries, args.words, args.dim
    chunks = len(chunk_starts(args))
    sampled = len(timings["starts"])
    sampled_rows = sum(min(args.chunk, R - s) for s in timings["starts"])
    sort_measured = common.median(timings["sort"])
    sort_total = sort_measured * R / sampled_rows
    extrapolated = sampled < chunks
    rows = common.machine_rows(device)
    rows += [
        ("inputs", f"{V} random words x {D} dims, {R} random queries (standard normal, seed {args.seed})", "", ""),
        ("cosine_topk", "lavise_fast.ops.cosine_topk(queries, words, k) over all queries, words scanned in chunks",
         "", ""),
        ("full sort", f"mm(q, E) / mm(|q|, |E|) then torch.sort of every whole row, first k kept, in chunks of "
                      f"{args.chunk} queries (the official code: one image's row at a time); "
                      + (f"timed on {sampled} of the {chunks} chunks (seeded sample, {sampled_rows} queries) and "
                         f"EXTRAPOLATED linearly to all {R} queries" if extrapolated else f"all {chunks} chunks timed")
                      + "; the sort does not depend on k: one run serves every k", "", ""),
        ("timing", f"{args.repeats} interleaved run(s) each after a warm-up on 8 queries", "", ""),
        ("full sort, measured", f"{_spread(timings['sort'])} for {sampled_rows} queries; "
                                f"{1e3 * sort_measured / sampled_rows:.3g} ms per query", "", ""),
    ]
    if extrapolated:
        rows.append(("full sort, extrapolated", f"{common.fmt_s(sort_total)} for {R} queries (EXTRAPOLATED, not run)",
                     "", ""))
    for k in args.k:
        fused = common.median(timings["fused"][k])
        same, total = timings["checks"][k]
        rows += [
            (f"cosine_topk, k={k}", f"{_spread(timings['fused'][k])} for {R} queries; "
                                    f"{1e3 * fused / R:.3g} ms per query", "", ""),
            (f"full sort / cosine_topk, k={k}", f"{sort_total / fused:.1f}x"
             + (" (extrapolated / measured)" if extrapolated else ""), "", ""),
            (f"identical indices, k={k}", f"{same} of {total} sampled queries",
             f"{total} of {total}", "met" if same == total else f"**missed** ({total - same} differ)"),
        ]
    notes = [f"- command: `{common.command_line()}`"]
    if memories is not None:
        for side in SIDES:
            m = memories[side]
            label = "cosine_topk, all queries" if side == "cosine_topk" else (
                f"full sort, {m.get('chunks', '?')} chunk(s) of {args.chunk}")
            if "error" in m:
                rows.append((f"peak memory, {label}", m["error"], "", "not measured"))
            else:
                rows.append((f"peak memory, {label}", common.fmt_mib(m["bytes"]), "", ""))
        fused_b, sort_b = memories["cosine_topk"].get("bytes"), memories["sort"].get("bytes")
        if fused_b and sort_b:
            rows.append(("peak memory, full sort / cosine_topk", f"{sort_b / fused_b:.1f}x", "", ""))
        method = next((m["method"] for m in memories.values() if "method" in m), "")
        whole = R * V * 16
        notes.append(f"- memory: {method}; one fresh subprocess per side, above the words and queries "
                     f"({common.fmt_mib(4 * (V + R) * D)}), after a warm-up on 8 queries. The full sort's peak is "
                     "one chunk's (the cosine similarities with their sorted values and int64 indices; the product "
                     f"and the divisor before them are as large); sorting all {R} rows at once would hold at least "
                     + (f"{whole / 2**30:.1f} GiB." if whole >= 2**30 else f"{common.fmt_mib(whole)}."))
    rows.append(("load average at the end", common.load_average(), "", ""))
    caution = common.contention_note("short operations")
    if caution:
        notes.append(caution)
    return common.markdown_table(rows), notes


def measure(args: argparse.Namespace, device: torch.device) -> tuple[str, list[str], list[str]]:
    """Times both sides, probes their memory; returns the heading, table and notes."""
    queries, words = make_inputs(args, device)
    timings = time_interleaved(args, queries, words, device)
    del queries, words
    memories = None
    if not args.no_memory:
        memories = {side: memory_subprocess(args, side, device) for side in SIDES}
    table, notes = report(args, device, timings, memories)
    ks = ", ".join(str(k) for k in args.k)
    heading = (f"Vocabulary scoring: cosine_topk vs a full sort, {args.words} words x {args.dim} dims, "
               f"{args.queries} queries, k = {ks} ({device.type}), {common.today()}")
    return heading, table, notes


def check_k(args: argparse.Namespace) -> str | None:
    return f"--k must lie in [1, --words], got {args.k}" if any(not 1 <= k <= args.words for k in args.k) else None


def main(argv: list[str] | None = None) -> int:
    return common.run_script(build_parser, measure, argv, probe=probe_memory, at_least={"baseline_chunks": 0},
                             check=check_k, positive=("words", "dim", "queries", "chunk", "repeats"))


if __name__ == "__main__":
    sys.exit(main())
