"""Per-filter thresholds: the streaming quantile sketch against storing every activation.

    PYTHONPATH=. python bench/thresholds.py                         # 1,000 images of [512, 7, 7] feature maps
    PYTHONPATH=. python bench/thresholds.py --no-features-only      # ResNet-18 layer4 over 1,000 images at 224 px
    PYTHONPATH=. python bench/thresholds.py --images 64 --channels 16 --no-memory   # seconds
    PYTHONPATH=. python bench/thresholds.py --append-results        # also append to RESULTS.md

The thresholds t_k are the per-filter 0.995 quantile of all activations of the layer (every
position of every image). Three ways, on the same feature batches:

- ``sketch``: ``lavise_fast.stats.ChannelQuantiles(C)`` updated once per batch, then
  ``quantile(0.995)``; its state does not grow with the number of images;
- ``numpy``: every batch stored on the host, concatenated, ``np.percentile(values, 99.5)`` per
  filter (``baselines.official_infer.thresholds_store_everything``, the Network Dissection way;
  the official LaViSE code loads thresholds it never computes);
- ``torch``: the same with ``torch.cat`` and ``torch.quantile(values, 0.995)`` per filter.

Features (default, ``--features-only``): the CNN costs the same on every side, so it is taken
out: the batches are random feature maps [64, 512, 7, 7] (ResNet-18 ``layer4`` at 224 px), a
ReLU of a per-channel scaled and shifted normal (seeded; every channel has about 2 % to 50 % of
its values above 0, like a real layer). With ``--no-features-only`` the batches are ResNet-18
``layer4`` outputs (seeded random weights, ``weights=None``) of random images, and every timed
pass includes the CNN.

Time: in one run, interleaved (sketch, numpy, torch, sketch, ...), ``--repeats`` times each
after a one-batch warm-up, over the same batches made in advance (features-only) or the same
images; medians. Peak memory: one fresh subprocess per side (this script with
``--memory-probe SIDE``) whose batches are made as they are read, so that only what the side
keeps can grow with the number of images: ``VmHWM`` minus the ``VmRSS`` before the call, with
glibc's mmap threshold fixed (``e2e_common.PeakMemoryProbe``; CUDA: ``max_memory_allocated``).
Accuracy: the share of each filter's values above the sketch's estimate, against the exact
0.005 (the design's tolerance: 0.0049 to 0.0051), and the estimate's error relative to
``np.percentile``'s.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import e2e_common as common
import numpy as np
import torch
from baselines.official_infer import thresholds_store_everything

from lavise_fast.layers import LayerFeatures
from lavise_fast.stats import ChannelQuantiles

SIDES = ("sketch", "numpy", "torch")
QUANTILE = 0.995
SHARE_LOW, SHARE_HIGH = 0.0049, 0.0051  # the design's tolerance around 1 - QUANTILE


def build_parser() -> argparse.ArgumentParser:
    parser = common.script_parser(
        "Times the per-filter 0.995 thresholds by the quantile sketch against storing every activation "
        "(np.percentile, torch.quantile), measures their peak memory and the sketch's accuracy; prints one table.",
        __doc__,
    )
    parser.add_argument("--images", type=int, default=1000, help="N, images (feature maps) [%(default)s]")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch [%(default)s]")
    parser.add_argument(
        "--features-only", action=argparse.BooleanOptionalAction, default=True,
        help="stream random feature maps instead of running the CNN (its cost is the same on every side) "
        "[%(default)s]",
    )
    parser.add_argument("--channels", type=int, default=512, help="C of the random feature maps [%(default)s]")
    parser.add_argument("--grid", type=int, default=7, help="side of the random feature maps [%(default)s]")
    parser.add_argument("--image-size", type=int, default=224, help="with --no-features-only: image side [%(default)s]")
    parser.add_argument("--layer", default="layer4", help="with --no-features-only: the ResNet-18 layer [%(default)s]")
    parser.add_argument("--capacity", type=int, default=1024, help="centroids per channel of the sketch [%(default)s]")
    common.add_common_arguments(
        parser, seeds="the features (or model and images)", repeats=3, memory_probe={"choices": SIDES}
    )
    return parser


# --- the feature stream -----------------------------------------------------------------------


def channel_params(channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) [C, 1, 1] of the random feature maps, seeded."""
    generator = torch.Generator().manual_seed(seed + 7919)
    scale = 0.5 + 2.5 * torch.rand(channels, generator=generator)
    shift = scale * (-2.0 + 2.0 * torch.rand(channels, generator=generator))  # P(value > 0) from 2 % to 50 %
    return scale[:, None, None], shift[:, None, None]


def feature_batch(index: int, n: int, channels: int, grid: int, seed: int,
                  params: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Batch ``index`` of the seeded random feature maps [n, C, grid, grid]: relu(scale * normal + shift)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    scale, shift = params
    return torch.relu(torch.randn(n, channels, grid, grid, generator=generator) * scale + shift)


def feature_stream(args: argparse.Namespace, device: torch.device, images: int | None = None,
                   model: torch.nn.Module | None = None) -> Iterator[torch.Tensor]:
    """The feature batches, made as they are asked for (features-only) or computed by ``model``."""
    images = args.images if images is None else images
    if args.features_only:
        params = channel_params(args.channels, args.seed)
        for index, start in enumerate(range(0, images, args.batch_size)):
            yield feature_batch(index, min(args.batch_size, images - start), args.channels, args.grid, args.seed,
                                params).to(device)
        return
    with torch.no_grad(), LayerFeatures(model, [args.layer]) as tap:
        for batch in common.generate_batches(images, args.batch_size, args.image_size, args.seed, device):
            yield tap(batch)[args.layer]


def source(args: argparse.Namespace, device: torch.device, model: torch.nn.Module | None,
           premade: list[torch.Tensor] | None = None) -> Callable[[], Iterable[torch.Tensor]]:
    """A function giving a fresh iterable of the feature batches (the premade ones when given)."""
    if premade is not None:
        return lambda: iter(premade)
    return lambda: feature_stream(args, device, model=model)


# --- the three sides --------------------------------------------------------------------------


def run_side(side: str, features: Iterable[torch.Tensor], args: argparse.Namespace,
             device: torch.device) -> np.ndarray:
    """The thresholds [C] of one side over ``features``."""
    if side == "sketch":
        sketch = None
        for batch in features:
            if sketch is None:
                sketch = ChannelQuantiles(batch.shape[1], capacity=args.capacity, device=device)
            sketch.update(batch)
        return sketch.quantile(QUANTILE).cpu().numpy()
    return thresholds_store_everything(features, 100 * QUANTILE, backend=side)


def warm_up(args: argparse.Namespace, device: torch.device, model: torch.nn.Module | None) -> None:
    for side in SIDES:
        run_side(side, feature_stream(args, device, images=min(args.batch_size, args.images), model=model), args,
                 device)


def time_interleaved(args: argparse.Namespace, device: torch.device, model: torch.nn.Module | None,
                     premade: list[torch.Tensor] | None) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """(seconds per side, thresholds per side) of ``args.repeats`` interleaved runs."""
    warm_up(args, device, model)
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    results: dict[str, np.ndarray] = {}
    make = source(args, device, model, premade)
    for _ in range(args.repeats):
        for side in SIDES:
            elapsed, results[side] = common.timed(lambda side=side: run_side(side, make(), args, device), device)
            seconds[side].append(elapsed)
    return seconds, results


def accuracy(args: argparse.Namespace, device: torch.device, model: torch.nn.Module | None,
             premade: list[torch.Tensor] | None, estimates: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per side, the share of each filter's values above its threshold [C] (the exact share: 1 - 0.995)."""
    above = {side: torch.zeros(len(t), dtype=torch.float64) for side, t in estimates.items()}
    count = 0
    thresholds = {side: torch.as_tensor(t, dtype=torch.float32, device=device) for side, t in estimates.items()}
    for batch in source(args, device, model, premade)():
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
        for side, t in thresholds.items():
            above[side] += (batch > t[None, :, None, None]).sum((0, 2, 3)).double().cpu()
    return {side: (a / count).numpy() for side, a in above.items()}


# --- peak memory ------------------------------------------------------------------------------


def probe_memory(args: argparse.Namespace, device: torch.device) -> dict:
    """In this process: the peak memory of side ``args.memory_probe`` over batches made as they are read."""
    model = None if args.features_only else common.resnet18(args.seed, device)
    side = args.memory_probe
    run_side(side, feature_stream(args, device, images=min(args.batch_size, args.images), model=model), args,
             device)
    with common.PeakMemoryProbe(device) as peak:
        run_side(side, feature_stream(args, device, model=model), args, device)
    return {"side": side, "bytes": peak.bytes, "method": peak.method}


def memory_subprocess(args: argparse.Namespace, side: str, device: torch.device, timeout_s: float = 1800) -> dict:
    """Runs :func:`probe_memory` for ``side`` in a fresh process with the same settings."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", side, "--device", device.type]
    cmd += common.forwarded_options(
        args, ("images", "batch_size", "channels", "grid", "image_size", "layer", "capacity", "seed", "threads")
    )
    cmd.append("--features-only" if args.features_only else "--no-features-only")
    return {"side": side} | common.json_subprocess(cmd, timeout_s)


# --- the report -------------------------------------------------------------------------------


def _spread(values: list[float]) -> str:
    return f"{common.fmt_s(common.median(values))} (min {common.fmt_s(min(values))}, max {common.fmt_s(max(values))})"


def report(args: argparse.Namespace, device: torch.device, shape: tuple[int, ...], seconds: dict[str, list[float]],
           results: dict[str, np.ndarray], shares: dict[str, np.ndarray],
           memories: dict[str, dict] | None) -> tuple[list[str], list[str]]:
    """(table lines, notes) of the run."""
    N = args.images
    C, h, w = shape[1], shape[2], shape[3]
    stored = N * C * h * w * 4
    rows = common.machine_rows(device)
    if args.features_only:
        what = (f"{N} random feature maps [{C}, {h}, {w}] (seed {args.seed}) in batches of {args.batch_size}: "
                "relu(scale_c * normal + shift_c), made in advance for the timing; the CNN is left out (its cost is "
                "the same on every side)")
    else:
        what = (f"ResNet-18 (weights=None, seed {args.seed}) {args.layer} [{C}, {h}, {w}] of {N} random images at "
                f"{args.image_size} px in batches of {args.batch_size}; every timed pass includes the CNN (and "
                "making the random images)")
    rows += [
        ("features", what, "", ""),
        ("sides", f"sketch = ChannelQuantiles({C}, capacity={args.capacity}).update per batch + quantile(0.995); "
                  "numpy = store every activation (host), concatenate, np.percentile(99.5) per filter; torch = "
                  "the same with torch.cat and torch.quantile(0.995) per filter", "", ""),
        ("timing", f"{args.repeats} interleaved runs each (sketch, numpy, torch, ...) after a one-batch warm-up",
         "", ""),
    ]
    for side in SIDES:
        rows.append((f"{side} (median)", _spread(seconds[side]) + f"; {N / common.median(seconds[side]):.0f} images/s",
                     "", ""))
    for side in ("numpy", "torch"):
        ratio = common.median(seconds[side]) / common.median(seconds["sketch"])
        rows.append((f"{side} / sketch, time", f"{ratio:.2f}x", "", ""))
    share = shares["sketch"]
    values = h * w * N
    slack = 1.0 / values  # one value's share: the exact share itself is a count over `values`
    inside = int(((share >= SHARE_LOW - slack) & (share <= SHARE_HIGH + slack)).sum())
    exact = results["numpy"]
    rel = np.abs(results["sketch"] - exact) / np.maximum(np.abs(exact), 1e-12)
    rows += [
        ("sketch: share of values above its 0.995 estimate, per filter",
         f"min {share.min():.6f}, median {np.median(share):.6f}, max {share.max():.6f} ({values} values a filter)",
         f"{SHARE_LOW}-{SHARE_HIGH} (+- 1/{values})",
         "met" if inside == C else f"**missed** ({C - inside} of {C} filters outside)"),
        ("numpy (exact): share above np.percentile(99.5)",
         f"min {shares['numpy'].min():.6f}, median {np.median(shares['numpy']):.6f}, max {shares['numpy'].max():.6f}",
         "", ""),
        ("sketch vs np.percentile, relative error", f"median {np.median(rel):.2e}, max {rel.max():.2e}", "", ""),
        ("torch.quantile vs np.percentile, max relative error",
         f"{(np.abs(results['torch'] - exact) / np.maximum(np.abs(exact), 1e-12)).max():.2e}", "", ""),
    ]
    notes = [f"- command: `{common.command_line()}`"]
    if memories is not None:
        for side in SIDES:
            m = memories[side]
            if "error" in m:
                rows.append((f"peak memory, {side}", m["error"], "", "not measured"))
            else:
                rows.append((f"peak memory, {side}", common.fmt_mib(m["bytes"]), "", ""))
        sketch = memories["sketch"].get("bytes")
        for side in ("numpy", "torch"):
            other = memories[side].get("bytes")
            if sketch and other:
                rows.append((f"peak memory, {side} / sketch", f"{other / sketch:.1f}x", "", ""))
        method = next((m["method"] for m in memories.values() if "method" in m), "")
        notes.append(f"- memory: {method}; one fresh subprocess per side, whose batches are made as they are read "
                     "(each probe warms up on one batch first). The store-everything sides hold every activation "
                     f"({common.fmt_mib(stored)} for {N} images) and then their concatenation (as much again); the "
                     f"sketch holds {C} x {args.capacity} centroids ({common.fmt_mib(C * args.capacity * 16)}) "
                     "whatever the number of images. Every side also holds the batch being made.")
    rows.append(("load average at the end", common.load_average(), "", ""))
    caution = common.contention_note("many small operations (torch.quantile on one filter at a time)")
    if caution:
        notes.append(caution)
    return common.markdown_table(rows), notes


def measure(args: argparse.Namespace, device: torch.device) -> tuple[str, list[str], list[str]]:
    """Times the three sides, checks their accuracy, probes their memory; returns the heading, table and notes."""
    model = None if args.features_only else common.resnet18(args.seed, device)
    premade = list(feature_stream(args, device)) if args.features_only else None
    seconds, results = time_interleaved(args, device, model, premade)
    shares = accuracy(args, device, model, premade, results)
    shape = tuple(premade[0].shape) if premade else tuple(next(feature_stream(args, device, 1, model)).shape)
    del premade
    memories = None
    if not args.no_memory:
        memories = {side: memory_subprocess(args, side, device) for side in SIDES}
    table, notes = report(args, device, shape, seconds, results, shares, memories)
    what = "random feature maps" if args.features_only else f"ResNet-18 {args.layer}"
    heading = (f"Thresholds: quantile sketch vs storing every activation, {what} [{shape[1]}, {shape[2]}, "
               f"{shape[3]}] x {args.images} images ({device.type}), {common.today()}")
    return heading, table, notes


def main(argv: list[str] | None = None) -> int:
    return common.run_script(build_parser, measure, argv, probe=probe_memory, at_least={"capacity": 8},
                             positive=("images", "batch_size", "channels", "grid", "image_size", "repeats"))


if __name__ == "__main__":
    sys.exit(main())
