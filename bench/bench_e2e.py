"""pytest-benchmark suite of the end-to-end paths: the single-pass sweep and explainer training.

Groups: ``sweep ...`` holds ``bare`` (the forward pass to ResNet-18 ``layer4``, the floor) and
``explain`` (``lavise_fast.explain`` over the same pre-made batches); ``train ...`` holds
``lavise_fast`` (the whole ``train_explainer`` call) and ``official`` (one epoch of the official
one-pair-per-step scheme over a sample of pairs; ``extra_info`` has its extrapolation to all
pairs and epochs). Sizes follow ``--bench-scale`` (``e2e_common.E2E_SCALES``: ``full`` is the
issue's, what ``sweep.py`` and ``train.py`` run by default; ``smoke`` under
``--benchmark-disable``). The scripts give the interleaved ratios and the memory measure; the
``*_script`` cases run them at tiny sizes so that they keep working (skipped by
``--benchmark-only``).

    pytest bench/bench_e2e.py --benchmark-only --bench-scale quick
    pytest bench/bench_e2e.py --benchmark-disable -q        # CI: each body once, smoke sizes
"""

from __future__ import annotations

import time

import e2e_common as common
import pytest
import sweep
import torch
import train
from baselines.official_train import OfficialTrainer

DEVICES = ("cpu", pytest.param("cuda", marks=pytest.mark.cuda))
ROUND_BUDGET_S = 3.0  # timed rounds per benchmark aim at about this many seconds ...
MIN_ROUNDS, MAX_ROUNDS = 3, 30  # ... within these bounds,
LONG_CALL_S = 10.0  # except a single round for calls longer than this.


def e2e_scale(config: pytest.Config) -> common.E2EScale:
    """The sizes that ``--bench-scale`` (see conftest.py) resolves to."""
    scale = config.getoption("bench_scale")
    if scale == "auto":
        scale = "smoke" if config.getoption("benchmark_disable", default=False) else "full"
    return common.E2E_SCALES[scale]


@pytest.fixture
def scale(request: pytest.FixtureRequest) -> common.E2EScale:
    return e2e_scale(request.config)


def _pedantic(benchmark, fn, device: torch.device):
    """Times ``fn`` (device synchronised inside) with rounds sized from one probe call (which also warms up)."""

    def run():
        out = fn()
        common.synchronize(device)
        return out

    if benchmark.disabled:
        return benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    rounds = 1 if elapsed > LONG_CALL_S else max(MIN_ROUNDS, min(MAX_ROUNDS, int(ROUND_BUDGET_S / max(elapsed, 1e-6))))
    return benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)


def _sweep_args(s: common.E2EScale) -> list[str]:
    return ["--images", str(s.images), "--image-size", str(s.image_size), "--batch-size", str(s.batch_size),
            "--vocabulary", str(s.vocabulary)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ("bare", "explain"))
def test_sweep(benchmark, scale, device, impl):
    device = common.resolve_device(device)
    args = sweep.build_parser().parse_args(_sweep_args(scale))
    setup = sweep.build(args, device)
    batches = common.premade_batches(args.images, args.batch_size, args.image_size, args.seed, device)
    benchmark.group = f"sweep resnet18 {args.layer} {args.images}x{args.image_size}px {device.type}"
    benchmark.extra_info.update(impl=impl, images=args.images, image_size=args.image_size,
                                batch_size=args.batch_size, vocabulary=args.vocabulary)
    sweep.bare_pass(setup.model, batches[:1], args.layer)  # warm-up, one batch
    if impl == "bare":
        seen = _pedantic(benchmark, lambda: sweep.bare_pass(setup.model, batches, args.layer), device)
        assert seen == args.images
    else:
        sweep.explain_pass(setup, batches[:1], args)
        result = _pedantic(benchmark, lambda: sweep.explain_pass(setup, batches, args), device)
        sweep.check_result(result, setup, args.images, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ("lavise_fast", "official"))
def test_train(benchmark, scale, device, impl):
    device = common.resolve_device(device)
    args = train.build_parser().parse_args([
        "--images", str(scale.train_images), "--image-size", str(scale.image_size),
        "--masks-per-image", str(scale.masks_per_image), "--words", str(scale.words),
        "--baseline-pairs", str(scale.baseline_pairs),
    ])
    model = common.resnet18(args.seed, device)
    words = common.random_words(args.words)
    space = common.random_space(words, args.dim, args.seed)
    reference = common.RandomReference(args.images, args.image_size, args.masks_per_image, words, args.seed)
    benchmark.group = f"train resnet18 {args.layer} {reference.pairs} pairs {args.image_size}px {device.type}"
    benchmark.extra_info.update(impl=impl, pairs=reference.pairs, epochs=args.epochs)
    if impl == "lavise_fast":
        warm = torch.utils.data.Subset(reference, range(min(len(reference), 4)))
        train.run_lavise(model, warm, space, args, device, epochs=1)
        explainer = _pedantic(benchmark, lambda: train.run_lavise(model, reference, space, args, device), device)
        assert explainer.trained and explainer.channels == 512
        return
    seen = sorted({words[w] for w in reference.labels.flatten().tolist()})
    trainer = OfficialTrainer(model, reference, args.layer, seen, space.encode(seen), device=device, seed=args.seed)
    sample = train.sample_pairs(reference.pairs, args.baseline_pairs, args.seed)
    trainer.epoch(sample[:1])  # warm-up, one step
    benchmark.extra_info.update(timed_pairs=len(sample), note="one epoch over timed_pairs; extrapolate linearly")
    loss = _pedantic(benchmark, lambda: trainer.epoch(sample), device)
    assert loss == loss  # not NaN
    if not benchmark.disabled and benchmark.stats is not None:
        per_pair = benchmark.stats.stats.median / len(sample)
        benchmark.extra_info["extrapolated_s"] = per_pair * reference.pairs * args.epochs


def test_sweep_script(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    code = sweep.main(["--images", "8", "--image-size", "32", "--batch-size", "4", "--vocabulary", "40",
                       "--repeats", "1", "--no-memory", "--device", "cpu", "--append-results", str(results)])
    assert code == 0
    out = capsys.readouterr().out
    assert "explain / bare, ratio of medians" in out and "peak memory" not in out
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\n## End-to-end sweep") and "| quantity | value |" in text


def test_sweep_memory_probe():
    """One fresh-process probe (the script runs one per size); the report reads what it returns."""
    args = sweep.build_parser().parse_args(["--images", "8", "--image-size", "32", "--batch-size", "4",
                                            "--vocabulary", "40", "--device", "cpu"])
    device = torch.device("cpu")
    probe = sweep.memory_subprocess(args, 8, device, timeout_s=120)
    assert "error" not in probe, probe
    assert probe["images"] == 8 and probe["explain"] > 0 and probe["bare"] >= 0
    larger = dict(probe, images=32, explain=probe["explain"] * 2)
    setup = sweep.build(args, device)
    table, _ = sweep.report(args, device, setup, sweep.Timings([1.0], [1.05]), [probe, larger])
    text = "\n".join(table)
    assert "| explain / bare, ratio of medians | 1.050 | <= 1.10 | met |" in text
    assert "peak memory growth of explain, 8 -> 32 images | +100.0% | <= 10% | **missed** (+100.0%) |" in text


def test_train_script(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    code = train.main(["--images", "4", "--image-size", "32", "--masks-per-image", "2", "--words", "5",
                       "--epochs", "2", "--baseline-pairs", "3", "--device", "cpu", "--append-results", str(results)])
    assert code == 0
    out = capsys.readouterr().out
    assert "official / lavise_fast, 2 epochs" in out
    assert "EXTRAPOLATED linearly to 8 pairs x 2 epochs" in out
    assert "## End-to-end training" in results.read_text()
