"""End-to-end sweep: ``lavise_fast.explain`` against the bare forward pass it rides on and
against the official inference (one filter at a time, batch size 1).

    PYTHONPATH=. python bench/sweep.py                                  # the issue's sizes
    PYTHONPATH=. python bench/sweep.py --images 1000 --no-memory        # the stretch and the >= 50x target
    PYTHONPATH=. python bench/sweep.py --model resnet50                 # layer4 of ResNet-50: 2,048 filters
    PYTHONPATH=. python bench/sweep.py --images 32 --image-size 64 --baseline-filters 1   # seconds
    PYTHONPATH=. python bench/sweep.py --append-results                 # also append to RESULTS.md

Settings (defaults): torchvision ResNet-18 (``--model resnet50``: ResNet-50) with seeded random
weights (``weights=None``, eval), layer ``layer4`` (512 filters; 2,048 for ResNet-50), 512
random images (seeded) at 224 px in batches of 64, method
``projection``, P = 25 top images and s = 5 words per image, a vocabulary of 1,202 random unit
vectors of dimension 384, and an untrained ``Explainer(512, 384, layer="layer4")`` in eval mode
(timing does not depend on the weights).

Time: in one run, interleaved (bare, explain, bare, explain, ...), ``--repeats`` times each after
a one-batch warm-up of both: (a) the bare forward pass to the layer (``LayerFeatures``, stopped
right after it: the floor any sweep pays) and (b) ``explain(model, loader, explainer,
vocabulary=..., progress=False)``, over the same loader: a list of image batches made in advance
on the device, so that data loading is excluded from both. Reported: medians (and min, max), the
ratio of the medians and the ratio of the minima. Target: explain / bare <= 1.10 (stretch: <= 1.05
at 1,000 images).

The official inference (``baselines/official_infer.py``): for each of ``--baseline-filters``
filters (a seeded sample), a pass over every image at batch size 1 for the filter's maxima, then
the CNN again on each of its P top images, the head, a full sort of the vocabulary per image and
the ``int(weight)``-fold vote; over the same images (the same pre-made batches, read one image at
a time), the same model, head, vocabulary and device. Each sampled filter is timed once, the
filters spread over the repeats of the interleaved runs; the mean time per filter is
EXTRAPOLATED linearly to all the layer's filters (each filter costs the same: N + P passes of
one image), and the table says so. Target: official / explain >= 50x for 512 filters over 1,000
images (``--images 1000``). The baseline's top-P maxima are checked against explain's.

Memory: the peak of one ``explain`` over N and over 4N images, each size in a fresh subprocess
(this script with ``--memory-probe``), whose loader makes the seeded batches as they are asked for
so that the images themselves are never all in memory and only explain's own state can grow with
N. The probe warms up on one batch, returns freed heap to the system, resets the kernel's
high-water mark and reports ``VmHWM`` minus the ``VmRSS`` before the call, with glibc's mmap
threshold fixed (``e2e_common.subprocess_env``) so that freed tensors leave the resident set (CUDA:
``max_memory_allocated`` above the start); then the same for the bare pass, for reference.
Target: the peak grows by at most 10 % from N to 4N images.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import e2e_common as common
import torch
from baselines.official_infer import BatchedImages, FilterExplanation, OfficialInference

import lavise_fast
from lavise_fast.layers import LayerFeatures

TARGET_RATIO = 1.10
STRETCH_RATIO, STRETCH_IMAGES = 1.05, 1000
TARGET_MEMORY_GROWTH = 0.10  # from N to 4N images
MEMORY_FACTOR = 4
TARGET_BASELINE_SPEEDUP = 50.0  # official inference / explain ...
BASELINE_TARGET_FILTERS, BASELINE_TARGET_IMAGES = 512, 1000  # ... for 512 filters over 1,000 images


def build_parser() -> argparse.ArgumentParser:
    parser = common.script_parser(
        "Times lavise_fast.explain against the bare forward pass to the layer (interleaved, one run) "
        "and measures explain's peak memory at N and 4N images; prints one markdown table.",
        __doc__,
    )
    parser.add_argument("--images", type=int, default=512, help="N, the number of random target images [%(default)s]")
    parser.add_argument(
        "--image-size", type=int, default=224, help="side of the square images, in pixels [%(default)s]",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (both passes) [%(default)s]")
    parser.add_argument(
        "--model", choices=sorted(common.MODELS), default="resnet18",
        help="the torchvision CNN (random seeded weights) [%(default)s]",
    )
    parser.add_argument(
        "--layer", default="layer4", help="the layer whose filters are explained [%(default)s]",
    )
    parser.add_argument("--top-images", type=int, default=25, help="P, top images per filter [%(default)s]")
    parser.add_argument("--words-per-image", type=int, default=5, help="s, words voted per top image [%(default)s]")
    parser.add_argument("--vocabulary", type=int, default=1202, help="words in the random vocabulary [%(default)s]")
    parser.add_argument("--dim", type=int, default=384, help="dimension of the random word space [%(default)s]")
    parser.add_argument(
        "--baseline-filters", type=int, default=2, metavar="K",
        help="filters (seeded sample) the official inference is timed on, then extrapolated to all; 0 skips it "
        "[%(default)s]",
    )
    parser.add_argument(
        "--memory-factor", type=int, default=MEMORY_FACTOR,
        help="the memory is compared at N and this many times N [%(default)s]"
    )
    common.add_common_arguments(
        parser, seeds="the model, the images and the vocabulary", repeats=3,
        memory_probe={
            "type": int, "metavar": "IMAGES",
            "help": "internal: measure the peak memory of explain (then of the bare pass) over IMAGES generated "
            "images in this process and print JSON; the script runs itself this way in a fresh subprocess per size",
        },
    )
    return parser


@dataclass
class Setup:
    model_name: str
    model: torch.nn.Module
    explainer: lavise_fast.Explainer
    vocabulary: lavise_fast.Vocabulary
    channels: int
    grid: tuple[int, int]


def build(args: argparse.Namespace, device: torch.device) -> Setup:
    """The seeded model, the vocabulary and an untrained explainer sized for the layer."""
    model = common.cnn(args.model, args.seed, device)
    probe = common.image_batch(0, 1, args.image_size, args.seed).to(device)
    with torch.no_grad():
        features = lavise_fast.layers.layer_features(model, args.layer, probe)
    channels, grid = features.shape[1], tuple(features.shape[2:])
    vocabulary = common.random_vocabulary(args.vocabulary, args.dim, args.seed)
    torch.manual_seed(args.seed)
    explainer = lavise_fast.Explainer(channels, args.dim, layer=args.layer).eval()
    return Setup(args.model, model, explainer, vocabulary, channels, grid)


def model_label(setup: Setup) -> str:
    return common.MODELS[setup.model_name]


@torch.no_grad()
def bare_pass(model: torch.nn.Module, loader, layer: str) -> int:
    """The forward pass of every batch to ``layer``, stopped right after it; returns the images seen."""
    seen = 0
    with LayerFeatures(model, [layer]) as tap:
        for images in loader:
            tap(images)
            seen += images.shape[0]
    return seen


def explain_pass(setup: Setup, loader, args: argparse.Namespace) -> lavise_fast.ExplainResult:
    return lavise_fast.explain(
        setup.model,
        loader,
        setup.explainer,
        top_images=args.top_images,
        words_per_image=args.words_per_image,
        vocabulary=setup.vocabulary,
        progress=False,
    )


@dataclass
class Timings:
    bare: list[float] = field(default_factory=list)
    explain: list[float] = field(default_factory=list)
    baseline: list[FilterExplanation] = field(default_factory=list)  # one per sampled filter
    baseline_checks: list[str] = field(default_factory=list)  # agreement with explain, per sampled filter

    @property
    def baseline_per_filter(self) -> float:
        return sum(b.seconds for b in self.baseline) / len(self.baseline)

    def baseline_total(self, filters: int) -> float:
        """The official inference's time for ``filters`` filters, extrapolated from the sampled ones."""
        return self.baseline_per_filter * filters

    @property
    def ratio(self) -> float:
        return common.median(self.explain) / common.median(self.bare)

    @property
    def min_ratio(self) -> float:
        return min(self.explain) / min(self.bare)


def baseline_filters(channels: int, count: int, seed: int) -> list[int]:
    """``count`` distinct filters of ``channels``, a seeded sample (in sampled order)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(channels, generator=generator)[: min(count, channels)].tolist()


def official_inference(setup: Setup, device: torch.device) -> OfficialInference:
    return OfficialInference(setup.model, setup.explainer.layer, setup.explainer, setup.vocabulary.vectors,
                             device=device)


def time_interleaved(setup: Setup, batches: list[torch.Tensor], args: argparse.Namespace,
                     device: torch.device) -> Timings:
    """Warm-up on one batch each, then bare and explain alternately, ``args.repeats`` times each; the
    official inference's sampled filters are timed once each, spread over the repeats (after the
    explain of the same repeat)."""
    bare_pass(setup.model, batches[:1], args.layer)
    explain_pass(setup, batches[:1], args)
    sample = baseline_filters(setup.channels, args.baseline_filters, args.seed)
    official = official_inference(setup, device) if sample else None
    if official is not None:  # warm-up: one image, P = 1
        official.explain_filter([batches[0][:1]], sample[0], P=1, s=args.words_per_image)
    timings = Timings()
    images = sum(b.shape[0] for b in batches)
    dataset = BatchedImages(batches)
    result = None
    for i in range(args.repeats):
        seconds, seen = common.timed(lambda: bare_pass(setup.model, batches, args.layer), device)
        timings.bare.append(seconds)
        seconds, result = common.timed(lambda: explain_pass(setup, batches, args), device)
        timings.explain.append(seconds)
        if seen != images:
            raise RuntimeError(f"the bare pass saw {seen} images, not {images}")
        check_result(result, setup, images, args)
        for f in sample[i :: args.repeats]:
            timings.baseline.append(official.explain_filter(dataset, f, P=args.top_images, s=args.words_per_image))
    for b in timings.baseline:
        timings.baseline_checks.append(check_baseline(b, result, setup))
    return timings


def check_baseline(official: FilterExplanation, result: lavise_fast.ExplainResult, setup: Setup) -> str:
    """Refuses an official run whose top-P maxima differ from explain's (a broken baseline); returns
    how many of explain's top words it shares (the votes differ: ``int(weight)`` against the weight)."""
    k = result.filters.index(official.filter)
    mine = torch.tensor(result.top_activations[k])
    theirs = torch.tensor(official.top_activations[: len(mine)])
    scale = max(1.0, float(mine.abs().max())) if len(mine) else 1.0
    if len(theirs) != len(mine) or not torch.allclose(theirs, mine, rtol=1e-4, atol=1e-4 * scale):
        raise RuntimeError(f"the official inference's top maxima of filter {official.filter} differ from explain's: "
                           f"{theirs[:5].tolist()} vs {mine[:5].tolist()}")
    words = [setup.vocabulary.words[w] for w in official.words]
    shared = len(set(words) & set(result.words[k]))
    return f"filter {official.filter}: {shared}/{len(result.words[k])}"


def check_result(result: lavise_fast.ExplainResult, setup: Setup, images: int, args: argparse.Namespace) -> None:
    """Refuses a sweep that did not explain every filter over every image (a broken benchmark)."""
    if result.settings.get("images") != images or len(result.words) != setup.channels:
        raise RuntimeError(f"explain saw {result.settings.get('images')} images and explained "
                           f"{len(result.words)} filters; expected {images} and {setup.channels}")
    expected_top = min(args.top_images, images)
    if any(len(top) != expected_top for top in result.top_images):
        raise RuntimeError(f"explain returned filters without their {expected_top} top images")
    # A dead filter (never above 0) gets no words; a random network has a few.
    if sum(bool(words) for words in result.words) < setup.channels // 2:
        raise RuntimeError("explain found words for fewer than half of the filters")


# --- peak memory ------------------------------------------------------------------------------


def probe_memory(args: argparse.Namespace, device: torch.device) -> dict:
    """In this process: the peak memory of explain, then of the bare pass, over ``args.memory_probe``
    images made batch by batch as the loader is read."""
    setup = build(args, device)
    images = args.memory_probe

    def loader():
        return common.generate_batches(images, args.batch_size, args.image_size, args.seed, device)

    warm = common.premade_batches(args.batch_size, args.batch_size, args.image_size, args.seed + 1, device)
    bare_pass(setup.model, warm, args.layer)
    explain_pass(setup, warm, args)
    del warm
    with common.PeakMemoryProbe(device) as explain_peak:
        result = explain_pass(setup, loader(), args)
    check_result(result, setup, images, args)
    del result
    with common.PeakMemoryProbe(device) as bare_peak:
        bare_pass(setup.model, loader(), args.layer)
    return {"images": images, "explain": explain_peak.bytes, "bare": bare_peak.bytes, "method": explain_peak.method}


def memory_subprocess(args: argparse.Namespace, images: int, device: torch.device, timeout_s: float = 1800) -> dict:
    """Runs :func:`probe_memory` for ``images`` in a fresh process with the same settings."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", str(images), "--device", device.type]
    cmd += common.forwarded_options(args, ("model", "image_size", "batch_size", "layer", "top_images",
                                           "words_per_image", "vocabulary", "dim", "seed", "threads",
                                           "keep_freed_memory"))
    return {"images": images} | common.json_subprocess(cmd, timeout_s)


# --- the report -------------------------------------------------------------------------------


def _spread(values: list[float]) -> str:
    return f"{common.fmt_s(common.median(values))} (min {common.fmt_s(min(values))}, max {common.fmt_s(max(values))})"


def report(args: argparse.Namespace, device: torch.device, setup: Setup, timings: Timings,
           memories: list[dict] | None) -> tuple[list[str], list[str]]:
    """(table lines, notes) of the run."""
    N = args.images
    rows = common.machine_rows(device)
    rows += [
        ("model", f"torchvision {model_label(setup)}, random seeded weights (weights=None), eval; layer {args.layer} "
                  f"({setup.channels} filters, {setup.grid[0]}x{setup.grid[1]} grid)", "", ""),
        ("images", f"{N} random images (seed {args.seed}) at {args.image_size} px, batch size {args.batch_size}; "
                   "loader = a list of batches made in advance on the device (data loading excluded from both)",
         "", ""),
        ("explain settings", f"method projection, P = {args.top_images}, s = {args.words_per_image}, vocabulary of "
                             f"{len(setup.vocabulary)} random unit vectors (dim {args.dim}), untrained Explainer"
                             f"({setup.channels}, {args.dim}) in eval mode", "", ""),
        ("timing", f"{args.repeats} interleaved runs each (bare, explain, ...) after a one-batch warm-up; "
                   "time.perf_counter around the whole pass", "", ""),
        ("bare forward to the layer (median)", _spread(timings.bare) +
         f"; {N / common.median(timings.bare):.1f} images/s", "", ""),
        ("explain (median)", _spread(timings.explain) + f"; {N / common.median(timings.explain):.1f} images/s", "",
         ""),
    ]
    ratio, min_ratio = timings.ratio, timings.min_ratio
    rows.append(("explain / bare, ratio of medians", f"{ratio:.3f}", f"<= {TARGET_RATIO:.2f}",
                 "met" if ratio <= TARGET_RATIO else f"**missed** ({ratio:.3f} > {TARGET_RATIO:.2f})"))
    rows.append(("explain / bare, ratio of minima", f"{min_ratio:.3f}", "", ""))
    if N >= STRETCH_IMAGES:
        stretch = "met" if ratio <= STRETCH_RATIO else f"missed ({ratio:.3f} > {STRETCH_RATIO:.2f})"
    else:
        stretch = f"not measured (needs --images {STRETCH_IMAGES})"
    rows.append(("stretch", f"{ratio:.3f} at {N} images", f"<= {STRETCH_RATIO:.2f} at {STRETCH_IMAGES} images",
                 stretch))
    notes = [f"- command: `{common.command_line()}`"]
    rows += baseline_rows(args, setup, timings, notes)
    if memories is not None:
        small, large = memories
        for m in memories:
            if "error" in m:
                rows.append((f"peak memory, {m['images']} images", m["error"], "", "not measured"))
            else:
                rows.append((f"peak memory, {m['images']} images", f"explain {common.fmt_mib(m['explain'])}, bare "
                             f"pass {common.fmt_mib(m['bare'])}: explain's own state "
                             f"{common.fmt_mib(m['explain'] - m['bare'])}", "", ""))
        if "error" in small or "error" in large or not small["explain"]:
            rows.append(("peak memory growth", "-", f"<= {TARGET_MEMORY_GROWTH:.0%}", "not measured"))
        else:
            growth = large["explain"] / small["explain"] - 1
            rows.append((f"peak memory growth of explain, {small['images']} -> {large['images']} images",
                         f"{growth:+.1%}", f"<= {TARGET_MEMORY_GROWTH:.0%}",
                         "met" if growth <= TARGET_MEMORY_GROWTH else f"**missed** ({growth:+.1%})"))
            notes.append(f"- memory: {small['method']}; one fresh subprocess per size whose loader makes the seeded "
                         "batches as they are read (the images are never all in memory); each probe warms up on "
                         "one batch first. The bare pass's peak (activations of one batch, the batch being read and "
                         "the one before it) is the floor both sizes share; explain's own state is the difference. "
                         "Compare sizes of several batches each: over a single batch no previous batch is held.")
    return common.markdown_table(rows), notes


def baseline_rows(args: argparse.Namespace, setup: Setup, timings: Timings,
                  notes: list[str]) -> list[tuple[str, str, str, str]]:
    """The official inference's rows (and notes): measured, extrapolated, the ratio and its target."""
    target = f">= {TARGET_BASELINE_SPEEDUP:g}x ({BASELINE_TARGET_FILTERS} filters, {BASELINE_TARGET_IMAGES} images)"
    if not timings.baseline:
        if args.baseline_filters == 0:
            return []
        return [("official / explain", "-", target, "not measured")]
    N, C, P = args.images, setup.channels, min(args.top_images, args.images)
    per_filter = timings.baseline_per_filter
    max_share = sum(b.max_pass_s for b in timings.baseline) / sum(b.seconds for b in timings.baseline)
    total = timings.baseline_total(C)
    explain_s, bare_s = common.median(timings.explain), common.median(timings.bare)
    ratio = total / explain_s
    if C == BASELINE_TARGET_FILTERS and N >= BASELINE_TARGET_IMAGES:
        verdict = "met" if ratio >= TARGET_BASELINE_SPEEDUP else (
            f"**missed** ({ratio:.1f}x < {TARGET_BASELINE_SPEEDUP:g}x)")
    else:
        verdict = f"not judged here ({C} filters, {N} images)"
    filters = ", ".join(str(b.filter) for b in timings.baseline)
    rows = [
        ("official inference", f"baselines/official_infer.py: per filter, {N} passes of one image for its maxima, "
                               f"then {P} more for its top images, head, full sort of the {len(setup.vocabulary)} "
                               f"words per image, int(weight)-fold vote; timed on {len(timings.baseline)} filter(s) "
                               f"({filters}, seeded sample), once each, interleaved with the runs above", "", ""),
        ("official, measured", f"{common.fmt_s(per_filter)} per filter (mean; "
                               + ", ".join(common.fmt_s(b.seconds) for b in timings.baseline)
                               + f"); {max_share:.0%} of it in the max-activation pass", "", ""),
        ("official, extrapolated", f"{common.fmt_s(total)} for all {C} filters (EXTRAPOLATED linearly from "
                                   f"{len(timings.baseline)} filter(s), not run)", "", ""),
        ("official / explain (extrapolated / median)", f"{ratio:.1f}x", target, verdict),
        ("official / bare (extrapolated / median)", f"{total / bare_s:.1f}x", "", ""),
        ("load average at the end", common.load_average(), "", ""),
        ("official's top words shared with explain's", "; ".join(timings.baseline_checks) + " (top-P maxima "
         "agree; the votes differ: int(weight) copies against the weight)", "", ""),
    ]
    caution = common.contention_note("single-image passes (the official inference)")
    if caution:
        notes.append(caution.replace("numbers are inflated", "numbers and the official / explain ratio are inflated"))
    notes.append(f"- official inference: each filter costs {N} + {P} passes of one image, so the extrapolation to "
                 f"{C} filters is linear; a variant that kept the max-activation pass across filters (the official "
                 "code does not: one filter per run) would cost one pass over the images plus "
                 f"{P} x {C} single-image passes. Same images, model, head, vocabulary and device as explain; its "
                 "vocabulary is the sweep's (the original sorts all 400,000 GloVe words per image, slower still).")
    return rows


def measure(args: argparse.Namespace, device: torch.device) -> tuple[str, list[str], list[str]]:
    """Times both sides, probes the memory of two sizes; returns the heading, table and notes."""
    setup = build(args, device)
    batches = common.premade_batches(args.images, args.batch_size, args.image_size, args.seed, device)
    timings = time_interleaved(setup, batches, args, device)
    del batches
    memories = None
    if not args.no_memory:
        memories = [memory_subprocess(args, n, device) for n in (args.images, args.memory_factor * args.images)]
    table, notes = report(args, device, setup, timings, memories)
    versus = " and the official inference" if timings.baseline else ""
    heading = (f"End-to-end sweep: explain vs the bare forward pass{versus}, {model_label(setup)} {args.layer}, "
               f"{args.images} images at {args.image_size} px ({device.type}), {common.today()}")
    return heading, table, notes


def main(argv: list[str] | None = None) -> int:
    return common.run_script(build_parser, measure, argv, probe=probe_memory, at_least={"baseline_filters": 0},
                             positive=("images", "image_size", "batch_size", "top_images", "words_per_image",
                                       "vocabulary", "dim", "repeats", "memory_factor"))


if __name__ == "__main__":
    sys.exit(main())
