"""pytest-benchmark suite of the end-to-end paths: the single-pass sweep, explainer training,
the per-filter thresholds and vocabulary scoring.

Groups: ``sweep ...`` holds ``bare`` (the forward pass to ResNet-18 ``layer4``, the floor),
``explain`` (``lavise_fast.explain`` over the same pre-made batches) and ``official`` (the
official inference of one filter at batch size 1; ``extra_info`` has its extrapolation to all
filters); ``train ...`` holds ``lavise_fast`` (the whole ``train_explainer`` call) and
``official`` (one epoch of the official one-pair-per-step scheme over a sample of pairs;
``extra_info`` has its extrapolation to all pairs and epochs); ``thresholds ...`` holds
``sketch``, ``numpy`` and ``torch`` (``thresholds.py``'s sides over random feature maps);
``vocabulary ...`` holds ``cosine_topk`` (all queries) and ``sort`` (the full sort on a sample of
query chunks; ``extra_info`` has its extrapolation); ``onnx head ...`` holds ``torch`` (the head and
``cosine_topk`` on the device) and ``onnx`` (the fused export in onnxruntime, on the provider that
``OnnxHead`` picks, named in ``extra_info``). Sizes follow ``--bench-scale``
(``e2e_common.E2E_SCALES``: ``full`` is the issue's, what the scripts run by default; ``smoke``
under ``--benchmark-disable``). The scripts give the interleaved ratios and the memory measure;
the ``*_script`` cases run them at tiny sizes so that they keep working (skipped by
``--benchmark-only``).

    pytest bench/bench_e2e.py --benchmark-only --bench-scale quick
    pytest bench/bench_e2e.py --benchmark-disable -q        # CI: each body once, smoke sizes
"""

from __future__ import annotations

import time

import e2e_common as common
import numpy as np
import onnx_head
import pytest
import sweep
import thresholds
import torch
import train
import vocabulary
from baselines.official_infer import BatchedImages, thresholds_store_everything
from baselines.official_train import OfficialTrainer

import lavise_fast

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


@pytest.fixture
def smoke_threads(request: pytest.FixtureRequest):
    """One torch thread in check mode (``--benchmark-disable``), the previous count restored after.

    On a shared CPU the threads of a single-image pass wait for each other at every layer (seen
    here: 0.8 s per 32 px ResNet-18 pass at 2 threads under load, 0.02 s at 1), and the official
    inference makes dozens of such passes; check mode only shows that the code runs.
    """
    threads = torch.get_num_threads()
    if request.config.getoption("benchmark_disable", default=False):
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
@pytest.mark.parametrize("impl", ("bare", "explain", "official"))
def test_sweep(benchmark, scale, device, impl, smoke_threads):
    device = common.resolve_device(device)
    args = sweep.build_parser().parse_args(_sweep_args(scale))
    setup = sweep.build(args, device)
    batches = common.premade_batches(args.images, args.batch_size, args.image_size, args.seed, device)
    benchmark.group = f"sweep resnet18 {args.layer} {args.images}x{args.image_size}px {device.type}"
    benchmark.extra_info.update(impl=impl, images=args.images, image_size=args.image_size,
                                batch_size=args.batch_size, vocabulary=args.vocabulary)
    sweep.bare_pass(setup.model, batches[:1], args.layer)  # warm-up, one batch
    if impl == "official":
        official = sweep.official_inference(setup, device)
        f = sweep.baseline_filters(setup.channels, 1, args.seed)[0]
        official.explain_filter([batches[0][:1]], f, P=1)  # warm-up, one image
        dataset = BatchedImages(batches)
        benchmark.extra_info.update(filter=f, note="one filter; the layer's time is this x filters")
        explained = _pedantic(benchmark, lambda: official.explain_filter(dataset, f, P=args.top_images), device)
        assert explained.filter == f and len(explained.top_images) == min(args.top_images, args.images)
        if not benchmark.disabled and benchmark.stats is not None:
            benchmark.extra_info["extrapolated_s"] = benchmark.stats.stats.median * setup.channels
        return
    if impl == "bare":
        seen = _pedantic(benchmark, lambda: sweep.bare_pass(setup.model, batches, args.layer), device)
        assert seen == args.images
    else:
        sweep.explain_pass(setup, batches[:1], args)
        result = _pedantic(benchmark, lambda: sweep.explain_pass(setup, batches, args), device)
        sweep.check_result(result, setup, args.images, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ("lavise_fast", "official"))
def test_train(benchmark, scale, device, impl, smoke_threads):
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", thresholds.SIDES)
def test_thresholds(benchmark, scale, device, impl):
    device = common.resolve_device(device)
    args = thresholds.build_parser().parse_args([
        "--images", str(scale.quantile_images), "--channels", str(scale.quantile_channels),
        "--batch-size", str(min(64, scale.quantile_images)),
    ])
    premade = list(thresholds.feature_stream(args, device))
    benchmark.group = (f"thresholds {args.images}x{args.channels}x{args.grid}x{args.grid} feature maps "
                       f"{device.type}")
    benchmark.extra_info.update(impl=impl, images=args.images, channels=args.channels)
    thresholds.run_side(impl, premade[:1], args, device)  # warm-up, one batch
    t = _pedantic(benchmark, lambda: thresholds.run_side(impl, premade, args, device), device)
    assert t.shape == (args.channels,) and np.isfinite(t).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", vocabulary.SIDES)
def test_vocabulary(benchmark, scale, device, impl):
    device = common.resolve_device(device)
    args = vocabulary.build_parser().parse_args([
        "--words", str(scale.vocabulary_words), "--queries", str(scale.vocabulary_queries),
        "--chunk", str(scale.vocabulary_chunk), "--baseline-chunks", str(scale.vocabulary_chunks), "--k", "5",
    ])
    queries, words = vocabulary.make_inputs(args, device)
    benchmark.group = f"vocabulary {args.queries}x{args.words}x{args.dim} k=5 {device.type}"
    benchmark.extra_info.update(impl=impl, queries=args.queries, words=args.words, dim=args.dim)
    if impl == "cosine_topk":
        ops = lavise_fast.ops
        ops.cosine_topk(queries[:8], words, 5)  # warm-up
        _, idx = _pedantic(benchmark, lambda: ops.cosine_topk(queries, words, 5), device)
        assert idx.shape == (args.queries, 5)
        return
    starts = vocabulary.sampled_chunks(args)
    sampled = sum(min(args.chunk, args.queries - s) for s in starts)
    benchmark.extra_info.update(timed_queries=sampled, note="full sort of timed_queries; extrapolate linearly")
    vocabulary.full_sort(queries[:8], words, 5)  # warm-up
    idx = _pedantic(benchmark, lambda: vocabulary.sort_chunks(queries, words, starts, args.chunk, 5), device)
    assert len(idx) == len(starts)
    if not benchmark.disabled and benchmark.stats is not None:
        benchmark.extra_info["extrapolated_s"] = benchmark.stats.stats.median * args.queries / sampled


def _onnx_head_args(vectors: int, channels: int, vocabulary: int, *extra: str) -> list[str]:
    return ["--vectors", str(vectors), "--channels", str(channels), "--vocabulary", str(vocabulary), *extra]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", onnx_head.SIDES)
def test_onnx_head(benchmark, scale, device, impl, tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    device = common.resolve_device(device)
    args = onnx_head.build_parser().parse_args(_onnx_head_args(scale.head_vectors, scale.head_channels,
                                                               scale.vocabulary))
    setup = onnx_head.build(args, device)
    benchmark.group = f"onnx head {args.vectors}x{args.channels} {args.vocabulary} words k={args.k} {device.type}"
    benchmark.extra_info.update(impl=impl, vectors=args.vectors, channels=args.channels, words=args.vocabulary)
    if impl == "torch":
        run = lambda: onnx_head.torch_head(setup.explainer, setup.words, setup.pooled, args.k)  # noqa: E731
    else:
        onnx_head.export(setup, tmp_path / "head.onnx", args.k)
        head, _ = onnx_head.open_head(tmp_path / "head.onnx", device)
        benchmark.extra_info.update(provider=head.providers[0])
        run = lambda: head(setup.pooled)  # noqa: E731
    run()  # warm-up
    scores, indices = _pedantic(benchmark, run, device)
    assert scores.shape == indices.shape == (args.vectors, args.k) and indices.device == device


def test_onnx_head_script(tmp_path, capsys):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    results = tmp_path / "RESULTS.md"
    code = onnx_head.main(_onnx_head_args(64, 16, 40, "--dim", "8", "--repeats", "1", "--device", "cpu",
                                          "--append-results", str(results)))
    assert code == 0
    out = capsys.readouterr().out
    assert "| provider used | CPUExecutionProvider |  |  |" in out and "skipped" not in out
    assert "| identical top-5 indices, ONNX vs torch | 64 of 64 rows | 64 of 64 (near ties allowed) | met |" in out
    assert "largest \\|score difference\\|, ONNX vs torch |" in out and "## ONNX head" in results.read_text()


def test_onnx_head_gpu_without_onnxruntime_gpu(tmp_path, monkeypatch):
    """What device_check.sh reports on a GPU whose onnxruntime has no CUDA provider: the skip reason, the
    CPU provider's numbers and the torch head on the CPU beside them (run here with the GPU faked)."""
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    args = onnx_head.build_parser().parse_args(_onnx_head_args(32, 8, 20, "--dim", "8", "--repeats", "1"))
    setup = onnx_head.build(args, torch.device("cpu"))
    onnx_head.export(setup, tmp_path / "head.onnx", args.k)
    gpu = torch.device("cuda")
    head, skipped = onnx_head.open_head(tmp_path / "head.onnx", gpu)
    assert head.providers[0] == "CPUExecutionProvider"
    assert skipped.startswith(f"onnxruntime {ort.__version__} is the CPU build")
    monkeypatch.setattr(common, "synchronize", lambda device: None)  # the tensors stay on the CPU
    monkeypatch.setattr(common, "machine_rows", lambda device: [])
    timings, agree = onnx_head.time_interleaved(setup, head, args, gpu)
    assert timings.torch_cpu is not None and len(timings.torch_cpu) == 1 and agree.differ == 0
    table, _ = onnx_head.report(args, gpu, head, skipped, 1.0, 1000, timings, agree)
    text = "\n".join(table)
    assert f"| CUDAExecutionProvider | skipped: onnxruntime-gpu not importable on this machine ({skipped}) |" in text
    assert "| torch head on cpu (median) |" in text and "| ONNX (CPUExecutionProvider) / torch on cpu, time |" in text
    assert "inputs copied from cuda to the host, session.run on the CPU, outputs copied back" in text


def test_sweep_script(tmp_path, capsys, smoke_threads):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    code = sweep.main(["--images", "8", "--image-size", "32", "--batch-size", "4", "--vocabulary", "40",
                       "--repeats", "1", "--no-memory", "--device", "cpu", "--append-results", str(results)])
    assert code == 0
    out = capsys.readouterr().out
    assert "explain / bare, ratio of medians" in out and "peak memory" not in out
    assert "| official / explain (extrapolated / median) |" in out and "EXTRAPOLATED linearly from 2 filter(s)" in out
    assert "not judged here (512 filters, 8 images)" in out
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\n## End-to-end sweep") and "| quantity | value |" in text


def test_official_inference_agrees_with_explain(smoke_threads):
    """The official loop finds explain's top images and maxima; its words come from the vocabulary."""
    args = sweep.build_parser().parse_args(["--images", "10", "--image-size", "32", "--batch-size", "4",
                                            "--vocabulary", "40", "--top-images", "3"])
    device = torch.device("cpu")
    setup = sweep.build(args, device)
    batches = common.premade_batches(args.images, args.batch_size, args.image_size, args.seed, device)
    result = sweep.explain_pass(setup, batches, args)
    official = sweep.official_inference(setup, device)
    for f in sweep.baseline_filters(setup.channels, 3, args.seed):
        explained = official.explain_filter(BatchedImages(batches), f, P=3, s=2, num_words=4)
        sweep.check_baseline(explained, result, setup)  # raises on different maxima
        if len(set(result.top_activations[f])) == len(result.top_activations[f]):  # no ties (np.argsort is unstable)
            assert explained.top_images == result.top_images[f]
        assert len(explained.words) <= 4 and all(0 <= w < 40 for w in explained.words)
        assert explained.max_pass_s > 0 and explained.top_s > 0


def test_thresholds_store_everything_is_the_percentile():
    features = [torch.randn(3, 4, 5, 5), torch.randn(2, 4, 5, 5)]
    exact = torch.quantile(torch.cat(features).transpose(0, 1).reshape(4, -1), 0.995, dim=1)
    for backend in ("numpy", "torch"):
        got = thresholds_store_everything(iter(features), 99.5, backend=backend)
        np.testing.assert_allclose(got, exact.numpy(), rtol=1e-5)


def test_thresholds_script(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    code = thresholds.main(["--images", "12", "--batch-size", "5", "--channels", "6", "--repeats", "1",
                            "--no-memory", "--device", "cpu", "--append-results", str(results)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| numpy / sketch, time |" in out and "share of values above its 0.995 estimate" in out
    assert "peak memory" not in out and "## Thresholds" in results.read_text()


def test_thresholds_memory_probe():
    args = thresholds.build_parser().parse_args(["--images", "12", "--batch-size", "5", "--channels", "6",
                                                 "--device", "cpu"])
    device = torch.device("cpu")
    probe = thresholds.memory_subprocess(args, "numpy", device, timeout_s=120)
    assert "error" not in probe, probe
    assert probe["side"] == "numpy" and probe["bytes"] >= 0
    memories = {"sketch": dict(probe, side="sketch", bytes=2 << 20), "numpy": dict(probe, bytes=6 << 20),
                "torch": {"side": "torch", "error": "timed out after 1 s"}}
    premade = list(thresholds.feature_stream(args, device))
    results = {side: thresholds.run_side(side, premade, args, device) for side in thresholds.SIDES}
    shares = thresholds.accuracy(args, device, None, premade, results)
    table, _ = thresholds.report(args, device, tuple(premade[0].shape), {s: [1.0] for s in thresholds.SIDES},
                                 results, shares, memories)
    text = "\n".join(table)
    assert "| peak memory, numpy / sketch | 3.0x |  |  |" in text
    assert "| peak memory, torch | timed out after 1 s |  | not measured |" in text


def test_vocabulary_script(tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    code = vocabulary.main(["--words", "500", "--dim", "16", "--queries", "40", "--chunk", "16", "--baseline-chunks",
                            "2", "--no-memory", "--device", "cpu", "--append-results", str(results)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| identical indices, k=5 | 24 of 24 sampled queries | 24 of 24 | met |" in out  # chunks of 16 and 8
    assert "| identical indices, k=20 | 24 of 24 sampled queries | 24 of 24 | met |" in out
    assert "EXTRAPOLATED linearly to all 40 queries" in out and "## Vocabulary scoring" in results.read_text()


def test_vocabulary_memory_probe():
    args = vocabulary.build_parser().parse_args(["--words", "500", "--dim", "16", "--queries", "40", "--chunk", "16",
                                                 "--device", "cpu"])
    probe = vocabulary.memory_subprocess(args, "sort", torch.device("cpu"), timeout_s=120)
    assert "error" not in probe, probe
    assert probe["side"] == "sort" and probe["chunks"] == 2 and probe["bytes"] >= 0


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


def test_train_script(tmp_path, capsys, smoke_threads):
    results = tmp_path / "RESULTS.md"
    code = train.main(["--images", "4", "--image-size", "32", "--masks-per-image", "2", "--words", "5",
                       "--epochs", "2", "--baseline-pairs", "3", "--device", "cpu", "--append-results", str(results)])
    assert code == 0
    out = capsys.readouterr().out
    assert "official / lavise_fast, 2 epochs" in out
    assert "EXTRAPOLATED linearly to 8 pairs x 2 epochs" in out
    assert "## End-to-end training" in results.read_text()
