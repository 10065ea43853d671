"""Image-folder throughput: ``lavise-fast explain --images DIR`` against a bare decode+forward loop
with the same workers and the same transforms, in one run, interleaved; the start-up cost apart.

    PYTHONPATH=. python bench/folder.py                      # 512 JPEGs, 3 runs of each
    PYTHONPATH=. python bench/folder.py --images 64 --repeats 1   # seconds
    PYTHONPATH=. python bench/folder.py --append-results     # also append to RESULTS.md

Settings (defaults): ``--images`` JPEGs (quality 90) of 500 x 375 pixels, the mean ImageNet size:
seeded smooth random pictures (a 16 x 12 random colour field upsampled bicubically, plus mild
noise), so they compress and decode like photographs rather than like noise; torchvision ResNet-18
with seeded random weights given as a state dict (``--model resnet18 --weights W.pth``), layer
``layer4``; an untrained explainer in the default word space, the 1,202 entities as vocabulary
(their embeddings cached by a warm-up run); batch size 64; resize 256, centre crop 224; the
workers the command picks by default (``lavise_fast.loaders.default_workers``) on both sides.

Time: each side is a whole command in a fresh process (``time.perf_counter`` around
``subprocess.run``), interleaved (explain, bare, explain, bare, ...) after one warm-up of each.
The bare loop (``bench/folder.py --bare``) imports torch and torchvision, keeps freed memory as the
command does (``lavise_fast.allocator``), loads the same model
from the same state dict, and runs ``ImageFolder`` (the command's dataset) through a
``DataLoader`` with the same workers to ``layer4`` (``LayerFeatures``, stopped there), no grad.
Start-up: the same two commands over a folder of one image (import, model, vocabulary and, for
explain, writing the result), measured interleaved too; per-image throughput is reported on the
time left after it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import e2e_common as common
import numpy as np
import torch

TARGET = 1.10  # explain over the folder (start-up apart) against the bare loop


def write_folder(folder: Path, count: int, seed: int) -> None:
    """``count`` seeded JPEGs of 500 x 375 that compress like photographs."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        field = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
        pixels = np.asarray(field, dtype=np.int16) + rng.integers(-12, 13, (375, 500, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def write_model_and_explainer(root: Path, seed: int) -> tuple[Path, Path]:
    from lavise_fast.explainer import Explainer
    from lavise_fast.semantics import default_space

    weights, explainer = root / "resnet18.pth", root / "explainer.pt"
    torch.save(common.resnet18(seed).state_dict(), weights)
    torch.manual_seed(seed)
    head = Explainer(512, default_space().dim, layer="layer4", space=default_space().name).eval()
    head.trained = True
    head.save(explainer)
    return weights, explainer


def bare(folder: str, weights: str, workers: int, batch_size: int) -> None:
    """The bare decode+forward loop (run as ``bench/folder.py --bare``), with the allocator setting the
    command applies by default (:func:`lavise_fast.allocator.keep_freed_memory`)."""
    from lavise_fast.allocator import keep_freed_memory
    from lavise_fast.data import ImageFolder
    from lavise_fast.layers import LayerFeatures
    from lavise_fast.models import load_model

    keep_freed_memory()
    model = load_model("resnet18", weights)
    loader = torch.utils.data.DataLoader(ImageFolder(folder), batch_size=batch_size, shuffle=False,
                                         num_workers=workers)
    with torch.no_grad(), LayerFeatures(model, ["layer4"]) as tap:
        for images in loader:
            tap(images)


def timed_run(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=common.subprocess_env())
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds


def measure(args: argparse.Namespace, device: torch.device) -> tuple[str, list[str], list[str]]:
    from lavise_fast.loaders import default_workers

    workers = default_workers() if args.workers is None else args.workers
    root = Path(tempfile.mkdtemp(prefix="lavise_fast_folder_bench_"))
    try:
        write_folder(root / "images", args.images, args.seed)
        write_folder(root / "one", 1, args.seed)
        weights, explainer = write_model_and_explainer(root, args.seed)

        def explain_command(folder: str) -> list[str]:
            return [sys.executable, "-m", "lavise_fast.cli", "explain", "--model", "resnet18", "--weights",
                    str(weights), "--explainer", str(explainer), "--images", str(root / folder), "--batch-size",
                    str(args.batch_size), "--workers", str(workers), "--out", str(root / "result.json"),
                    "--no-progress"]

        def bare_command(folder: str) -> list[str]:
            return [sys.executable, str(Path(__file__).resolve()), "--bare", str(root / folder), str(weights),
                    str(workers), str(args.batch_size)]

        for command in (explain_command("one"), bare_command("one")):  # warm-up: caches, page cache
            timed_run(command)
        times: dict[str, list[float]] = {"explain": [], "bare": [], "explain start": [], "bare start": []}
        for _ in range(args.repeats):
            times["explain"].append(timed_run(explain_command("images")))
            times["bare"].append(timed_run(bare_command("images")))
            times["explain start"].append(timed_run(explain_command("one")))
            times["bare start"].append(timed_run(bare_command("one")))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {name: common.median(values) for name, values in times.items()}
    net_explain, net_bare = med["explain"] - med["explain start"], med["bare"] - med["bare start"]
    ratio = net_explain / net_bare
    whole = med["explain"] / med["bare"]

    def spread(name: str) -> str:
        return f"{common.fmt_s(med[name])} (min {common.fmt_s(min(times[name]))}, max {common.fmt_s(max(times[name]))})"

    rows = [
        *common.machine_rows(device),
        ("images", f"{args.images} JPEGs of 500 x 375 (quality 90, seeded smooth pictures), batch size "
                   f"{args.batch_size}, resize 256, crop 224, {workers} DataLoader workers on both sides", "", ""),
        ("model", "torchvision ResNet-18, seeded random weights from a state dict, layer4 (512 filters)", "", ""),
        ("explain", "lavise-fast explain --model resnet18 --weights W --explainer E (untrained, default space) "
                    "--images DIR: method projection, P = 25, vocabulary entities (1,202 words, cached)", "", ""),
        ("timing", f"{args.repeats} interleaved runs of each whole command (fresh processes) after one warm-up", "",
         ""),
        ("explain, whole command (median)", spread("explain"), "", ""),
        ("bare decode+forward loop, whole command (median)", spread("bare"), "", ""),
        ("start-up: explain over one image (median)", spread("explain start"), "", ""),
        ("start-up: bare loop over one image (median)", spread("bare start"), "", ""),
        ("explain without start-up", f"{common.fmt_s(net_explain)}; {args.images / net_explain:.1f} images/s", "",
         ""),
        ("bare loop without start-up", f"{common.fmt_s(net_bare)}; {args.images / net_bare:.1f} images/s", "", ""),
        ("explain / bare, start-up apart", f"{ratio:.3f}", f"<= {TARGET:.2f}",
         "met" if ratio <= TARGET else "missed"),
        ("explain / bare, whole commands", f"{whole:.3f}", "", ""),
    ]
    heading = (f"Image-folder throughput: lavise-fast explain --images vs a bare decode+forward loop, "
               f"{args.images} JPEGs ({device}), {common.today()}")
    notes = [f"- command: `{common.command_line()}`",
             "- each whole command is a fresh process: its start-up (imports, model, vocabulary) is in the whole "
             "time and measured apart over a folder of one image."]
    return heading, common.markdown_table(rows), notes


def build_parser() -> argparse.ArgumentParser:
    parser = common.script_parser("lavise-fast explain --images against a bare decode+forward loop", __doc__)
    parser.add_argument("--images", type=int, default=512, help="JPEGs in the folder [%(default)s]")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch [%(default)s]")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the command's)")
    common.add_common_arguments(parser, seeds="the pictures and the weights", repeats=3)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--bare"]:
        folder, weights, workers, batch_size = argv[1:5]
        bare(folder, weights, int(workers), int(batch_size))
        return 0
    return common.run_script(build_parser, measure, argv, positive=("images", "batch_size", "repeats"))


if __name__ == "__main__":
    sys.exit(main())
