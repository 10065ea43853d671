"""The ``lavise-fast`` command.

``lavise-fast demo`` runs the operator library on random data shaped like a ResNet-18
``layer4`` sweep and prints what each step did and how long it took (the full LaViSE
demo replaces it once the explainer lands).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from tqdm import tqdm

from lavise_fast import ops
from lavise_fast.stats import ChannelQuantiles, TopImages


def _demo(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    C, H, W, P = args.channels, 7, 7, args.top_images
    print(f"lavise-fast demo: {args.images} random images, a {C}x{H}x{W} layer, top {P} images, on {device}")
    print(f"  torch {torch.__version__}, CUDA kernels built: {ops.has_cuda_kernels()}")
    tops, quantiles = TopImages(C, P, device=device), ChannelQuantiles(C, device=device)
    batches = [
        torch.randn(min(args.batch_size, args.images - s), C, H, W, generator=gen).relu_().to(device)
        for s in range(0, args.images, args.batch_size)
    ]
    timings = {}
    start = time.perf_counter()
    for x in tqdm(batches, desc="stream", disable=not args.progress):
        tops.update(x)
        quantiles.update(x)
    timings["stream (spatial_max_topk + quantile sketch)"] = time.perf_counter() - start
    thresholds = quantiles.quantile(0.995)

    start = time.perf_counter()
    features = torch.cat(batches)
    rows = tops.indices.flatten()
    filters = torch.arange(C, device=device).repeat_interleave(P)
    z = ops.attention_pool(features, rows, filters)
    timings["attention_pool (projection) of every top image"] = time.perf_counter() - start

    start = time.perf_counter()
    vocabulary = torch.randn(args.vocabulary, C, generator=gen).to(device)
    _, words = ops.cosine_topk(z, vocabulary, 5)
    timings[f"cosine_topk against {args.vocabulary} words"] = time.perf_counter() - start

    start = time.perf_counter()
    masks = torch.rand(len(batches[0]), 112, 112, generator=gen).to(device) > 0.7
    inter, union = ops.upsample_iou(batches[0], thresholds, masks, torch.arange(len(masks), device=device))
    iou = inter.float() / union.clamp_min(1).float()
    timings["upsample_iou of one batch against 112x112 masks"] = time.perf_counter() - start

    print(f"  thresholds (0.995 quantile per filter): mean {thresholds.mean():.3f}, "
          f"range [{thresholds.min():.3f}, {thresholds.max():.3f}]")
    print(f"  filter 0: top images {tops.indices[0, :5].tolist()} with maxima "
          f"{[round(v, 3) for v in tops.values[0, :5].tolist()]}")
    print(f"  filter 0, best image: word indices {words[0].tolist()}")
    print(f"  mean IoU of thresholded maps with random masks: {iou.mean():.4f}")
    width = max(len(k) for k in timings)
    for name, seconds in timings.items():
        print(f"  {name:<{width}}  {seconds * 1000:8.1f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lavise-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run the operators on random data and print what they did",
        epilog="example: lavise-fast demo --images 512 --device cpu",
    )
    demo.add_argument("--images", type=int, default=512, help="number of random images (default 512)")
    demo.add_argument("--channels", type=int, default=512, help="filters in the layer (default 512)")
    demo.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    demo.add_argument("--top-images", type=int, default=25, help="top images kept per filter (default 25)")
    demo.add_argument("--vocabulary", type=int, default=5000, help="random vocabulary size (default 5000)")
    demo.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    args = parser.parse_args(argv)
    for name in ("images", "channels", "batch_size", "vocabulary"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.top_images < 1 or args.top_images > args.images:
        parser.error(f"--top-images must lie in [1, --images], got {args.top_images}")
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())
