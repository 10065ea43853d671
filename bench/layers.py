"""Many layers in one pass: ``lavise_fast.explain`` over the five layers CLIP-Dissect explains in a
ResNet-50 (``conv1``, ``layer1`` ... ``layer4``) against the bare forward pass to the last of them,
interleaved in one run, and the peak memory at N and 4N images.

    PYTHONPATH=. python bench/layers.py                       # 256 images, 3 runs of each
    PYTHONPATH=. python bench/layers.py --images 32 --repeats 1 --no-memory   # seconds
    PYTHONPATH=. python bench/layers.py --append-results      # also append to RESULTS.md

Settings (defaults): torchvision ResNet-50 with seeded random weights, eval; the layers ``conv1``
(64 filters, 112 x 112), ``layer1`` (256), ``layer2`` (512), ``layer3`` (1,024) and ``layer4``
(2,048 filters, 7 x 7): 3,904 filters; random images at 224 px in batches of 32, made in advance
(no data loading timed); an untrained explainer per layer; method projection, P = 25, a random
vocabulary of 1,202 unit vectors (dim 384).

Time: the bare forward pass to ``layer4`` (``LayerFeatures`` over the five layers, stopped after
the last) and ``explain(model, loader, {layer: explainer})``, interleaved after a one-batch
warm-up. Target: explain / bare <= 1.15. Memory: as in ``bench/sweep.py`` (a fresh subprocess
per size, batches made as they are read): explain's peak at N and at 4N images. Target: flat
(<= 10 % growth).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import e2e_common as common
import torch

import lavise_fast
from lavise_fast.layers import LayerFeatures

LAYERS = ["conv1", "layer1", "layer2", "layer3", "layer4"]
TARGET, MEMORY_TARGET = 1.15, 0.10


def build(args: argparse.Namespace, device: torch.device):
    model = common.cnn("resnet50", args.seed, device)
    with torch.no_grad(), LayerFeatures(model, LAYERS) as tap:
        maps = tap(common.image_batch(0, 1, args.image_size, args.seed).to(device))
    torch.manual_seed(args.seed)
    explainers = {name: lavise_fast.Explainer(maps[name].shape[1], 384, layer=name).eval() for name in LAYERS}
    vocabulary = common.random_vocabulary(1202, 384, args.seed)
    return model, explainers, vocabulary, {name: tuple(maps[name].shape[1:]) for name in LAYERS}


@torch.no_grad()
def bare_pass(model, loader) -> None:
    with LayerFeatures(model, LAYERS) as tap:
        for images in loader:
            tap(images)


def explain_pass(model, explainers, vocabulary, loader):
    return lavise_fast.explain(model, loader, explainers, vocabulary=vocabulary, progress=False)


def probe(args: argparse.Namespace, device: torch.device) -> dict:
    model, explainers, vocabulary, _ = build(args, device)
    warm = common.premade_batches(args.batch_size, args.batch_size, args.image_size, args.seed + 1, device)
    bare_pass(model, warm)
    explain_pass(model, explainers, vocabulary, warm)
    del warm

    def loader():
        return common.generate_batches(args.memory_probe, args.batch_size, args.image_size, args.seed, device)

    with common.PeakMemoryProbe(device) as explain_peak:
        results = explain_pass(model, explainers, vocabulary, loader())
    assert all(r.settings.images == args.memory_probe for r in results.values())
    del results
    with common.PeakMemoryProbe(device) as bare_peak:
        bare_pass(model, loader())
    return {"explain": explain_peak.bytes, "bare": bare_peak.bytes, "method": explain_peak.method}


def measure(args: argparse.Namespace, device: torch.device) -> tuple[str, list[str], list[str]]:
    model, explainers, vocabulary, shapes = build(args, device)
    batches = common.premade_batches(args.images, args.batch_size, args.image_size, args.seed, device)
    bare_pass(model, batches[:1])
    explain_pass(model, explainers, vocabulary, batches[:1])
    bare_times, explain_times = [], []
    for _ in range(args.repeats):
        common.synchronize(device)
        start = time.perf_counter()
        bare_pass(model, batches)
        common.synchronize(device)
        bare_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        results = explain_pass(model, explainers, vocabulary, batches)
        common.synchronize(device)
        explain_times.append(time.perf_counter() - start)
    assert sorted(results) == sorted(LAYERS) and all(r.settings.images == args.images for r in results.values())
    ratio = common.median(explain_times) / common.median(bare_times)

    def spread(values: list[float]) -> str:
        return (f"{common.fmt_s(common.median(values))} (min {common.fmt_s(min(values))}, max "
                f"{common.fmt_s(max(values))}); {args.images / common.median(values):.1f} images/s")

    layers = ", ".join(f"{name} {shape[0]} x {shape[1]}x{shape[2]}" for name, shape in shapes.items())
    rows = [
        *common.machine_rows(device),
        ("model", f"torchvision ResNet-50, seeded random weights; layers {layers} "
                  f"({sum(s[0] for s in shapes.values())} filters)", "", ""),
        ("images", f"{args.images} random images at {args.image_size} px, batch size {args.batch_size}, made in "
                   "advance", "", ""),
        ("explain settings", "one pass over the five layers, method projection, P = 25, 1,202 random words (dim 384), "
                             "an untrained explainer per layer", "", ""),
        ("timing", f"{args.repeats} interleaved runs of each after a one-batch warm-up", "", ""),
        ("bare forward to layer4 (median)", spread(bare_times), "", ""),
        ("explain, five layers (median)", spread(explain_times), "", ""),
        ("explain / bare, ratio of medians", f"{ratio:.3f}", f"<= {TARGET:.2f}",
         "met" if ratio <= TARGET else "missed"),
    ]
    notes = [f"- command: `{common.command_line()}`"]
    if not args.no_memory:
        small = max(1, args.images // args.memory_factor)
        large = small * args.memory_factor
        peaks = {}
        for images in (small, large):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", str(images), "--device",
                   device.type, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
                   "--seed", str(args.seed)] + common.forwarded_options(args, ("threads", "keep_freed_memory"))
            peaks[images] = common.json_subprocess(cmd, 3600)
        growth = peaks[large]["explain"] / peaks[small]["explain"] - 1
        for images, peak in peaks.items():
            rows.append((f"peak memory, {images} images",
                         f"explain {common.fmt_mib(peak['explain'])}, bare pass {common.fmt_mib(peak['bare'])}", "",
                         ""))
        rows.append((f"peak memory growth of explain, {small} -> {large} images", f"{growth:+.1%}",
                     f"<= {MEMORY_TARGET:.0%}", "met" if growth <= MEMORY_TARGET else "missed"))
        notes.append(f"- memory: {peaks[small]['method']}; one fresh subprocess per size whose loader makes the "
                     "batches as they are read.")
    heading = (f"Five layers of ResNet-50 in one pass (conv1, layer1-4) vs the bare forward pass, {args.images} "
               f"images at {args.image_size} px ({device}), {common.today()}")
    return heading, common.markdown_table(rows), notes


def build_parser() -> argparse.ArgumentParser:
    parser = common.script_parser("explain over five ResNet-50 layers against the bare forward pass", __doc__)
    parser.add_argument("--images", type=int, default=256, help="N, random target images [%(default)s]")
    parser.add_argument("--image-size", type=int, default=224, help="side of the images [%(default)s]")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch [%(default)s]")
    parser.add_argument("--memory-factor", type=int, default=4,
                        help="memory is measured at N / factor and N images [%(default)s]")
    common.add_common_arguments(parser, seeds="the model, the images and the vocabulary", repeats=3,
                                memory_probe={"type": int, "metavar": "IMAGES"})
    return parser


def main(argv: list[str] | None = None) -> int:
    return common.run_script(build_parser, measure, argv, positive=("images", "batch_size", "repeats"), probe=probe)


if __name__ == "__main__":
    sys.exit(main())
