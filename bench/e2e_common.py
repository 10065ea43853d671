"""What the end-to-end benchmarks share: the seeded model, random images, word spaces and
reference sets, the sizes of the pytest cases, peak-memory probes and the results table.

Everything is random and seeded: timing does not depend on trained weights or real images,
so no weights or data set is downloaded. ``sweep.py`` (``explain`` against the bare forward
pass and the official inference), ``train.py`` (``train_explainer`` against the official
training scheme), ``thresholds.py`` (the quantile sketch against storing every activation) and
``vocabulary.py`` (``cosine_topk`` against a full sort) are the scripts, with ``onnx_head.py``
(the ONNX export of the head in onnxruntime against the PyTorch head); ``bench_e2e.py`` runs
the same code as pytest-benchmark cases. The scripts share their common options through
:func:`add_common_arguments` and the skeleton of their ``main`` through :func:`run_script`.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import memory
import torch
import torchvision

from lavise_fast.semantics import Static, Vocabulary

T = TypeVar("T")
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as text ("-" where the system has none)."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "-"


START_LOAD = load_average()  # when the script started (this module is imported first), for the table


# --- sizes of the pytest-benchmark cases (``--bench-scale``, see conftest.py) -----------------


@dataclass(frozen=True)
class E2EScale:
    """Sizes of the end-to-end pytest cases at one ``--bench-scale``."""

    images: int  # sweep: target images ...
    image_size: int  # ... of this side
    batch_size: int
    vocabulary: int  # sweep: random vocabulary words
    train_images: int  # train: reference images ...
    masks_per_image: int  # ... with this many objects each
    baseline_pairs: int  # train: (image, object) pairs the official scheme is timed on
    words: int = 50  # train: label words
    baseline_filters: int = 1  # sweep: filters the official inference is timed on (extrapolated)
    quantile_images: int = 1000  # thresholds: images of random [., 512, 7, 7] feature maps ...
    quantile_channels: int = 512  # ... with this many channels
    vocabulary_words: int = 400_000  # vocabulary: random words (keys) ...
    vocabulary_queries: int = 12_800  # ... queries scored against them ...
    vocabulary_chunk: int = 256  # ... the full-sort baseline's queries per chunk ...
    vocabulary_chunks: int = 2  # ... and the chunks it is timed on (extrapolated)
    head_vectors: int = 12_800  # onnx head: pooled vectors scored at once ...
    head_channels: int = 512  # ... of this many channels (vocabulary: ``vocabulary`` words)


E2E_SCALES: dict[str, E2EScale] = {
    # The sizes (what sweep.py and train.py run by default).
    "full": E2EScale(images=512, image_size=224, batch_size=64, vocabulary=1202, train_images=1000,
                     masks_per_image=7, baseline_pairs=300),
    # Same shapes, fewer images: a few seconds a case on a 2-core CPU.
    "quick": E2EScale(images=128, image_size=224, batch_size=64, vocabulary=1202, train_images=128,
                      masks_per_image=5, baseline_pairs=40, quantile_images=256, vocabulary_queries=1280,
                      vocabulary_chunks=1, head_vectors=1280),
    # CI (each body once): tiny images, so that the whole path runs in about a second.
    "smoke": E2EScale(images=8, image_size=64, batch_size=4, vocabulary=64, train_images=8,
                      masks_per_image=2, baseline_pairs=4, words=6, quantile_images=16, quantile_channels=8,
                      vocabulary_words=2000, vocabulary_queries=64, vocabulary_chunk=16, head_vectors=64,
                      head_channels=16),
}


# --- model, images, word spaces, reference set ----------------------------------------------


MODELS = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "vit_b_16": "ViT-B/16"}  # torchvision name -> display name


def cnn(name: str = "resnet18", seed: int = 0, device: torch.device | str = "cpu") -> torch.nn.Module:
    """torchvision's ``name`` (one of :data:`MODELS`) with seeded random weights (``weights=None``), in eval mode."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(weights=None).eval().to(device)


def resnet18(seed: int = 0, device: torch.device | str = "cpu") -> torch.nn.Module:
    """torchvision's ResNet-18 with seeded random weights (``weights=None``), in eval mode."""
    return cnn("resnet18", seed, device)


def image_batch(index: int, batch_size: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """Batch ``index`` of a seeded stream of random images [batch_size, 3, S, S] (standard normal,
    like normalised images); the same (index, sizes, seed) always gives the same batch."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randn(batch_size, 3, image_size, image_size, generator=generator)


def generate_batches(
    images: int, batch_size: int, image_size: int, seed: int = 0, device: torch.device | str = "cpu"
) -> Iterator[torch.Tensor]:
    """The seeded stream of ``images`` random images in batches, made as they are asked for, so
    that the images are never all in memory (the last batch may be smaller)."""
    for index, start in enumerate(range(0, images, batch_size)):
        yield image_batch(index, min(batch_size, images - start), image_size, seed).to(device)


def premade_batches(
    images: int, batch_size: int, image_size: int, seed: int = 0, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """The same stream as :func:`generate_batches`, made in advance (so that no data loading is timed)."""
    return list(generate_batches(images, batch_size, image_size, seed, device))


def random_words(count: int, prefix: str = "w") -> list[str]:
    width = len(str(max(count - 1, 0)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def random_space(words: list[str], dim: int = 384, seed: int = 0) -> Static:
    """A ``Static`` word space of random unit vectors (seeded) for ``words``."""
    generator = torch.Generator().manual_seed(seed)
    return Static(words, torch.randn(len(words), dim, generator=generator), name=f"random{dim}")


def random_vocabulary(count: int, dim: int = 384, seed: int = 0) -> Vocabulary:
    """A vocabulary of ``count`` random unit vectors of dimension ``dim`` (words ``c0000`` ...)."""
    words = random_words(count, prefix="c")
    return Vocabulary.from_words(words, random_space(words, dim, seed))


class RandomReference(torch.utils.data.Dataset):
    """A reference set of random images with ``masks_per_image`` random rectangular objects each.

    Item i: (image [3, S, S] float32, masks [K, S, S] bool, labels list[str] of K words drawn
    from ``words``), as ``train_explainer`` expects. The images are made once, up front (so that
    neither side of the training benchmark times image generation); masks are drawn from stored
    rectangles when asked for. :meth:`pair` gives one (image, mask, label) for the official
    one-object-per-step scheme.
    """

    def __init__(
        self, images: int, image_size: int, masks_per_image: int, words: list[str], seed: int = 0
    ) -> None:
        if images < 1 or masks_per_image < 1 or image_size < 2:
            raise ValueError(f"need images >= 1, masks_per_image >= 1, image_size >= 2; got "
                             f"{images}, {masks_per_image}, {image_size}")
        generator = torch.Generator().manual_seed(seed)
        self.image_size = image_size
        self.words = list(words)
        self.images = torch.randn(images, 3, image_size, image_size, generator=generator)
        S, K = image_size, masks_per_image
        # Rectangles [y0, y1, x0, x1], each side at least an eighth of the image.
        lo = torch.randint(0, S - max(1, S // 8), (images, K, 2), generator=generator)
        span = (torch.rand(images, K, 2, generator=generator) * (S - lo)).long().clamp_min(max(1, S // 8))
        hi = torch.minimum(lo + span, torch.tensor(S))
        self.boxes = torch.stack([lo[..., 0], hi[..., 0], lo[..., 1], hi[..., 1]], dim=-1)
        self.labels = torch.randint(0, len(self.words), (images, K), generator=generator)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def masks_per_image(self) -> int:
        return self.boxes.shape[1]

    @property
    def pairs(self) -> int:
        return self.boxes.shape[0] * self.boxes.shape[1]

    def _mask(self, i: int, j: int) -> torch.Tensor:
        y0, y1, x0, x1 = self.boxes[i, j].tolist()
        mask = torch.zeros(self.image_size, self.image_size, dtype=torch.bool)
        mask[y0:y1, x0:x1] = True
        return mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        K = self.masks_per_image
        masks = torch.stack([self._mask(i, j) for j in range(K)])
        return self.images[i], masks, [self.words[w] for w in self.labels[i].tolist()]

    def pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(image [3, S, S], mask [S, S] bool, label) of (image, object) pair ``index``."""
        i, j = divmod(index, self.masks_per_image)
        return self.images[i], self._mask(i, j), self.words[int(self.labels[i, j])]


# --- command line ---------------------------------------------------------------------------


def script_parser(description: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of a script: ``description`` above the options, the module's docstring ``doc`` below them."""
    return argparse.ArgumentParser(
        description=description, epilog=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    seeds: str,
    repeats: int = 1,
    memory_probe: dict[str, Any] | None = None,
) -> None:
    """Adds the options every end-to-end script shares: ``--repeats`` (default ``repeats``),
    ``--seed`` (its help names what it seeds: ``seeds``), ``--device``, ``--threads`` and
    ``--append-results``. With ``memory_probe``, also ``--no-memory`` and the internal
    ``--memory-probe``, by which the script runs itself in a fresh subprocess to measure one peak;
    ``memory_probe`` holds that option's keywords: ``type`` or ``choices``, and ``metavar`` and
    ``help`` where the default (one side per probe) does not fit."""
    parser.add_argument(
        "--repeats", type=int, default=repeats, help="timed runs of each side (interleaved) [%(default)s]"
    )
    parser.add_argument("--seed", type=int, default=0, help=f"seed of {seeds} [%(default)s]")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="apply lavise_fast.allocator.keep_freed_memory() first, as the lavise-fast command "
                             "does; both sides share it (default: glibc's own allocator settings)")
    parser.add_argument(
        "--append-results",
        nargs="?",
        const=str(RESULTS),
        default=None,
        metavar="PATH",
        help="append the table under a heading to PATH (default when given without PATH: bench/RESULTS.md)",
    )
    if memory_probe is None:
        return
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    probe = {
        "default": None,
        "help": "internal: measure the peak memory of one side in this process and print JSON; the script runs "
        "itself this way in a fresh subprocess per side",
        **memory_probe,
    }
    parser.add_argument("--memory-probe", **probe)


def check_at_least(parser: argparse.ArgumentParser, args: argparse.Namespace, names: tuple[str, ...],
                   minimum: int = 1) -> None:
    """Stops with a usage error when one of the options ``names`` (attribute names) is below ``minimum``."""
    for name in names:
        value = getattr(args, name)
        if value < minimum:
            parser.error(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def forwarded_options(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """``--name value`` for each of the options ``names`` that is set (``--name`` alone for a flag that is on), to
    hand them to a probe subprocess."""
    out: list[str] = []
    for name in names:
        value = getattr(args, name)
        if value is True:
            out.append(f"--{name.replace('_', '-')}")
        elif value is not None and value is not False:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out


KEPT_MEMORY = False  # whether --keep-freed-memory applied (the machine rows say so)


def configure_torch(args: argparse.Namespace) -> torch.device:
    """Applies ``--threads`` and ``--keep-freed-memory``, and returns the device that ``--device`` names
    (:func:`resolve_device`)."""
    global KEPT_MEMORY
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if getattr(args, "keep_freed_memory", False):
        from lavise_fast.allocator import keep_freed_memory

        KEPT_MEMORY = keep_freed_memory()
    return resolve_device(args.device)


Measure = Callable[[argparse.Namespace, torch.device], tuple[str, list[str], list[str]]]


def run_script(
    build_parser: Callable[[], argparse.ArgumentParser],
    measure: Measure,
    argv: list[str] | None = None,
    *,
    positive: tuple[str, ...] = (),
    at_least: dict[str, int] | None = None,
    check: Callable[[argparse.Namespace], str | None] | None = None,
    probe: Callable[[argparse.Namespace, torch.device], dict] | None = None,
) -> int:
    """The ``main`` of a script: parses ``argv``; a usage error when an option of ``positive`` is below 1, one of
    ``at_least`` below its minimum or ``check`` returns a message; :func:`configure_torch`; with ``--memory-probe``,
    prints ``probe``'s JSON; else publishes the (heading, table, notes) that ``measure`` returns. Returns 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_at_least(parser, args, positive)
    for name, minimum in (at_least or {}).items():
        check_at_least(parser, args, (name,), minimum)
    error = check(args) if check is not None else None
    if error:
        parser.error(error)
    device = configure_torch(args)
    if probe is not None and args.memory_probe is not None:
        print(json.dumps(probe(args, device)))
        return 0
    heading, table, notes = measure(args, device)
    publish(heading, table, notes, args.append_results)
    return 0


# --- timing ---------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """(seconds, result) of one call of ``fn``, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def median(values: list[float]) -> float:
    return statistics.median(values)


def resolve_device(name: str | None) -> torch.device:
    """``cuda`` (the current GPU) when asked or, with ``None``, when one is available; else ``cpu``."""
    name = name or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device available")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


# --- peak memory ----------------------------------------------------------------------------


class PeakMemoryProbe:
    """Peak memory above the state before the ``with`` block, in this process.

    CPU: heap is returned to the system first (``malloc_trim``), the kernel's high-water mark is
    reset (``/proc/self/clear_refs``) and the growth is ``VmHWM`` at the end minus ``VmRSS`` at the
    start (the same measure as ``memory.py``); without ``clear_refs``, the growth of ``ru_maxrss``
    (an under-estimate when an earlier peak was higher). CUDA: ``torch.cuda.max_memory_allocated``
    above what was allocated at the start. ``bytes`` and ``method`` are set on exit.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: int | None = None
        self.method = ""

    def __enter__(self) -> PeakMemoryProbe:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated above the start"
            return self
        memory._malloc_trim()
        self._hwm = memory._reset_high_water_mark()
        threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        fixed = f", glibc MALLOC_MMAP_THRESHOLD_={threshold}" if threshold else ""
        if self._hwm:
            self._before = memory._status_kib("VmRSS")
            self.method = "VmHWM - VmRSS at the start, fresh process" + fixed
        else:
            import resource

            self._before = max(memory._status_kib("VmRSS"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            self.method = "ru_maxrss growth, fresh process" + fixed
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._before
            return
        if self._hwm:
            peak = memory._status_kib("VmHWM")
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.bytes = max(0, peak - self._before) * 1024


def subprocess_env() -> dict[str, str]:
    """The environment for a probe subprocess: this one, with the repository root importable and
    glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``, unless already set).

    By default glibc raises that threshold each time a large block is freed (up to 32 MiB), after
    which feature maps of a few MiB come from the heap, whose freed space stays resident; the
    peak of the same work then drifts by a hundred MiB with the number of batches. With the
    threshold fixed, every tensor above 128 KiB is its own mapping, returned when freed, and the
    resident set follows the live tensors.
    """
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 << 10))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


def json_subprocess(cmd: list[str], timeout_s: float) -> dict:
    """Runs ``cmd`` (a probe: this interpreter on a bench script) in a fresh process with
    :func:`subprocess_env` and returns the JSON of the last line it printed, or ``{"error": why}``."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        reason = "killed (out of memory?)" if proc.returncode < 0 else f"exit {proc.returncode}"
        return {"error": f"{reason}: {tail}"}
    return json.loads(lines[-1])


def contention_note(what: str) -> str | None:
    """A caution for the notes when several torch threads ran on a CPU whose load exceeds its cores
    (``what`` names the timings that suffer most); None otherwise."""
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        return None
    if threads <= 1 or load <= cores:
        return None
    return (f"- **caution**: {threads} torch threads on {cores} cores with a load average of {load:.2f} at the end: "
            "the OpenMP threads of every parallel region wait for each other while other processes hold the cores, "
            "which costs about a scheduler slice per region (seen on this machine under load: 0.80 s per 112 px "
            f"ResNet-18 pass of one image at 2 threads against 0.021 s at 1 thread); {what} suffer most, so those "
            "numbers are inflated: run on a quiet machine or with --threads 1.")




# --- reporting ------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_rows(device: torch.device) -> list[tuple[str, str, str, str]]:
    """Table rows naming the machine: date, CPU and cores (with the load), GPU, software."""
    import lavise_fast
    from lavise_fast import ops

    cpu = f"{cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"
    if START_LOAD != "-":
        cpu += f", load average at start {START_LOAD}"
    rows = [
        ("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "", ""),
        ("CPU", cpu, "", ""),
    ]
    if device.type == "cuda":
        rows.append(("GPU", f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})", "", ""))
    rows.append((
        "software",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, lavise_fast {lavise_fast.__version__} "
        f"(CUDA kernels: {'yes' if ops.has_cuda_kernels() else 'no'}), Python {platform.python_version()}",
        "", "",
    ))
    rows.append(("device benchmarked", str(device), "", ""))
    rows.append(("CPU allocator", "glibc, freed memory kept for reuse (lavise_fast.allocator.keep_freed_memory)"
                 if KEPT_MEMORY else "the C library's defaults", "", ""))
    return rows


def command_line() -> str:
    args = " ".join(sys.argv[1:])
    return f"PYTHONPATH=. python bench/{Path(sys.argv[0]).name}" + (f" {args}" if args else "")


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:.0f} s"


def fmt_mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f} MiB"


def markdown_table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    """A four-column table: quantity, value, target, result."""
    out = ["| quantity | value | target | result |", "|---|---|---|---|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


def append_results(heading: str, lines: list[str], path: Path = RESULTS) -> None:
    """Appends ``heading`` (a level-2 markdown heading) and ``lines`` to ``path``."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if not text.endswith("\n"):
        text += "\n"
    text += f"\n## {heading}\n\n" + "\n".join(lines).rstrip() + "\n"
    path.write_text(text, encoding="utf-8")


def today() -> str:
    return datetime.date.today().isoformat()


def publish(heading: str, table: list[str], notes: list[str], append_to: str | None) -> None:
    """Prints the table under its heading, with its notes; appends all three to ``append_to`` when given."""
    print(f"## {heading}\n")
    print("\n".join(table))
    print()
    print("\n".join(notes))
    if append_to:
        append_results(heading, [*table, "", *notes], Path(append_to))

