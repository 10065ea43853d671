"""The explainer head exported to ONNX (fused with the vocabulary scoring) in onnxruntime, against
the PyTorch head on the device.

    PYTHONPATH=. python bench/onnx_head.py                                    # ResNet-18 layer4's head, 12,800 vectors
    PYTHONPATH=. python bench/onnx_head.py --channels 2048 --vectors 51200    # ResNet-50 layer4's head
    PYTHONPATH=. python bench/onnx_head.py --vectors 64 --channels 16 --dim 8 --vocabulary 40   # seconds
    PYTHONPATH=. python bench/onnx_head.py --append-results                   # also append to RESULTS.md

Settings (defaults): an ``Explainer(512, 384, layer="layer4")`` with seeded random weights and
random BatchNorm running statistics, in eval mode (timing and agreement do not depend on trained
weights), exported by ``lavise_fast.export_onnx`` fused with a vocabulary of 1,202 random unit
vectors of dimension 384, k = 5 (s, the words each top image votes for); 12,800 pooled vectors
(512 filters x P = 25 top images: what the head scores after a ResNet-18 ``layer4`` sweep), ReLU
of a standard normal (pooled features are not negative), seeded, made on ``--device``.

Sides, on the same pooled vectors:

- ``torch``: ``explainer(pooled)`` then ``lavise_fast.ops.cosine_topk(embedding, words, k)`` on
  ``--device``: what ``explain`` does with ``head="torch"``;
- ``onnx``: ``lavise_fast.OnnxHead(path)(pooled)`` on the provider that ``OnnxHead`` picks
  (``CUDAExecutionProvider`` where onnxruntime-gpu and a GPU are present, else
  ``CPUExecutionProvider``). The call takes the pooled vectors where they are and returns the
  outputs there, so on a GPU it includes the copies to the host and back (as ``explain`` with
  ``head="onnx"`` pays them).

With ``--device cuda`` and no usable ``CUDAExecutionProvider`` the script prints a line
``skipped: onnxruntime-gpu not importable on this machine (why)`` and reports the CPU provider;
the torch head is then also timed on the CPU, so that the table has a like-for-like pair.

Time: in one run, interleaved (torch, onnx, torch, ...), ``--repeats`` times each after one
warm-up call of each on all the vectors (onnxruntime sizes its memory arena on its first run);
medians. The export is timed once. Agreement: the largest absolute difference of the k scores,
and the rows whose k word indices are identical and in the same order; a row that differs only
where two words' scores lie within 1e-5 of each other (a near tie that the two orders of
summation may break either way) is counted apart.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.metadata
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import e2e_common as common
import torch

import lavise_fast
from lavise_fast import ops

SIDES = ("torch", "onnx")
CUDA_PROVIDER, CPU_PROVIDER = "CUDAExecutionProvider", "CPUExecutionProvider"
TARGET_SCORE_DIFF = 1e-4  # largest |score difference| between the two heads
NEAR_TIE = 1e-5  # two words' scores this close may come out in either order


def build_parser() -> argparse.ArgumentParser:
    parser = common.script_parser(
        "Times the explainer head exported to ONNX (fused with the vocabulary) in onnxruntime against "
        "the PyTorch head on the device, checks that they agree; prints one markdown table.",
        __doc__,
    )
    parser.add_argument("--vectors", type=int, default=12_800, help="R, pooled vectors scored at once [%(default)s]")
    parser.add_argument("--channels", type=int, default=512, help="C, channels of the layer [%(default)s]")
    parser.add_argument("--dim", type=int, default=384, help="D, dimension of the random word space [%(default)s]")
    parser.add_argument("--vocabulary", type=int, default=1202, help="words in the random vocabulary [%(default)s]")
    parser.add_argument("--k", type=int, default=5, help="words kept per vector [%(default)s]")
    parser.add_argument("--layer", default="layer4", help="the layer name the head is made for [%(default)s]")
    common.add_common_arguments(parser, seeds="the head, the vocabulary and the pooled vectors", repeats=5)
    return parser


@dataclass
class Setup:
    explainer: lavise_fast.Explainer  # in eval mode, on the device
    vocabulary: lavise_fast.Vocabulary
    words: torch.Tensor  # [V, D] unit rows, on the device
    pooled: torch.Tensor  # [R, C], on the device


def random_explainer(channels: int, dim: int, layer: str, space: str, seed: int) -> lavise_fast.Explainer:
    """An ``Explainer(channels, dim)`` with seeded random weights and BatchNorm running statistics, marked
    trained (``export_onnx`` refuses an untrained one), in eval mode."""
    torch.manual_seed(seed)
    explainer = lavise_fast.Explainer(channels, dim, layer=layer, space=space)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in explainer.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
    explainer.trained = True
    return explainer.eval()


def build(args: argparse.Namespace, device: torch.device) -> Setup:
    vocabulary = common.random_vocabulary(args.vocabulary, args.dim, args.seed)
    explainer = random_explainer(args.channels, args.dim, args.layer, vocabulary.space, args.seed).to(device)
    generator = torch.Generator().manual_seed(args.seed + 2)
    pooled = torch.relu(torch.randn(args.vectors, args.channels, generator=generator)).to(device)
    return Setup(explainer, vocabulary, vocabulary.vectors.to(device), pooled)


@torch.no_grad()
def torch_head(
    explainer: lavise_fast.Explainer, words: torch.Tensor, pooled: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [R, k], indices [R, k]) of the PyTorch head: the explainer, then ``cosine_topk``."""
    return ops.cosine_topk(explainer(pooled), words, k)


def export(setup: Setup, path: Path, k: int) -> float:
    """Writes the fused head to ``path``; returns the seconds it took."""
    seconds, _ = common.timed(
        lambda: lavise_fast.export_onnx(setup.explainer, path, vocabulary=setup.vocabulary, top_k=k),
        torch.device("cpu"),
    )
    return seconds


def cuda_provider_missing() -> str:
    """Why onnxruntime offers no CUDAExecutionProvider here (the installed distribution and its providers)."""
    import onnxruntime as ort

    providers = ", ".join(ort.get_available_providers())
    try:
        gpu = importlib.metadata.version("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        return (
            f"onnxruntime {ort.__version__} is the CPU build, onnxruntime-gpu is not installed; providers: {providers}"
        )
    return f"onnxruntime-gpu {gpu} is installed but offers no {CUDA_PROVIDER}; providers: {providers}"


def open_head(path: Path, device: torch.device) -> tuple[lavise_fast.OnnxHead, str | None]:
    """(the ONNX head on the provider that ``OnnxHead`` picks, why the CUDA provider is not in use where
    ``device`` is a GPU; None when it is in use or not wanted)."""
    import onnxruntime as ort

    head = lavise_fast.OnnxHead(path)
    if device.type != "cuda" or head.providers[0] == CUDA_PROVIDER:
        return head, None
    if CUDA_PROVIDER in ort.get_available_providers():
        return head, f"{CUDA_PROVIDER} is offered but the session fell back to {head.providers[0]} (CUDA libraries?)"
    return head, cuda_provider_missing()


@dataclass
class Agreement:
    rows: int
    score_diff: float  # largest |score difference|
    identical: int  # rows with the same k indices in the same order
    near_ties: int  # other rows whose scores agree within NEAR_TIE (a near tie broken the other way)

    @property
    def differ(self) -> int:
        return self.rows - self.identical - self.near_ties


def agreement(reference: tuple[torch.Tensor, torch.Tensor], other: tuple[torch.Tensor, torch.Tensor]) -> Agreement:
    """How far ``other`` (scores, indices) lies from ``reference``, row by row."""
    (ref_s, ref_i), (s, i) = (t.cpu() for t in reference), (t.cpu() for t in other)
    if s.shape != ref_s.shape or i.shape != ref_i.shape:
        raise RuntimeError(f"the heads disagree on the output shape: {tuple(s.shape)} vs {tuple(ref_s.shape)}")
    diff = (s - ref_s).abs()
    same = (i == ref_i).all(dim=1)
    tie = ~same & (diff.amax(dim=1) <= NEAR_TIE)
    return Agreement(len(same), float(diff.max()) if diff.numel() else 0.0, int(same.sum()), int(tie.sum()))


@dataclass
class Timings:
    torch: list[float]  # the torch head on the device
    onnx: list[float]
    torch_cpu: list[float] | None = None  # the torch head on the CPU, when onnx ran there and the device did not


def time_interleaved(
    setup: Setup, head: lavise_fast.OnnxHead, args: argparse.Namespace, device: torch.device
) -> tuple[Timings, Agreement]:
    """One warm-up call of each side on all the vectors, then ``args.repeats`` interleaved runs."""
    cpu = torch.device("cpu")
    runs = {
        "torch": (functools.partial(torch_head, setup.explainer, setup.words, setup.pooled, args.k), device),
        "onnx": (functools.partial(head, setup.pooled), device),
    }
    if device.type != "cpu" and head.providers[0] == CPU_PROVIDER:
        explainer = copy.deepcopy(setup.explainer).to(cpu)
        runs["torch_cpu"] = (
            functools.partial(torch_head, explainer, setup.words.to(cpu), setup.pooled.to(cpu), args.k),
            cpu,
        )
    outputs = {name: common.timed(fn, where)[1] for name, (fn, where) in runs.items()}  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, (fn, where) in runs.items():
            elapsed, outputs[name] = common.timed(fn, where)
            seconds[name].append(elapsed)
    timings = Timings(seconds["torch"], seconds["onnx"], seconds.get("torch_cpu"))
    return timings, agreement(outputs["torch"], outputs["onnx"])


# --- the report -------------------------------------------------------------------------------


def _spread(values: list[float], vectors: int) -> str:
    median = common.median(values)
    return (
        f"{common.fmt_s(median)} (min {common.fmt_s(min(values))}, max {common.fmt_s(max(values))}); "
        f"{vectors / median:,.0f} vectors/s"
    )


def report(
    args: argparse.Namespace,
    device: torch.device,
    head: lavise_fast.OnnxHead,
    skipped: str | None,
    export_s: float,
    onnx_bytes: int,
    timings: Timings,
    agree: Agreement,
) -> tuple[list[str], list[str]]:
    """(table lines, notes) of the run."""
    import onnxruntime as ort

    R, C, D, V, k = args.vectors, args.channels, args.dim, args.vocabulary, args.k
    provider = head.providers[0]
    if device.type == "cpu":
        call = "tensor to numpy, session.run, numpy to tensor"
    else:
        where = "the GPU" if provider == CUDA_PROVIDER else "the CPU"
        call = f"inputs copied from {device.type} to the host, session.run on {where}, outputs copied back"
    rows = common.machine_rows(device)
    rows += [
        (
            "head",
            f"Explainer({C}, {D}, layer={args.layer!r}): BatchNorm, Linear({C}, {C}), ReLU, BatchNorm, "
            f"Linear({C}, {D}); seeded random weights and running statistics, eval mode",
            "",
            "",
        ),
        (
            "vocabulary",
            f"{V} random unit vectors of dimension {D} (seed {args.seed}); k = {k} words kept per vector",
            "",
            "",
        ),
        ("pooled vectors", f"{R} x {C}, relu(standard normal) (seed {args.seed}), on {device}", "", ""),
        (
            "export",
            f"lavise_fast.export_onnx(explainer, vocabulary=..., top_k={k}): {common.fmt_s(export_s)}, "
            f"{common.fmt_mib(onnx_bytes)} (opset 18, the words a constant of the graph)",
            "",
            "",
        ),
        (
            "onnxruntime",
            f"{ort.__version__}; providers offered: {', '.join(ort.get_available_providers())}; "
            f"session: {', '.join(head.providers)}",
            "",
            "",
        ),
        ("provider used", provider, "", ""),
    ]
    if skipped:
        rows.append(
            (CUDA_PROVIDER, f"skipped: onnxruntime-gpu not importable on this machine ({skipped})", "", "not measured")
        )
    rows += [
        (
            "timing",
            f"{args.repeats} interleaved runs of each side after one warm-up call each, all {R} vectors a call",
            "",
            "",
        ),
        (f"torch head on {device.type} (median)", _spread(timings.torch, R), "", ""),
    ]
    if timings.torch_cpu is not None:
        rows.append(("torch head on cpu (median)", _spread(timings.torch_cpu, R), "", ""))
    rows += [
        (
            f"ONNX head, {provider} (median)",
            _spread(timings.onnx, R) + f"; the whole OnnxHead call: {call}",
            "",
            "",
        ),
        (
            f"ONNX ({provider}) / torch on {device.type}, time",
            f"{common.median(timings.onnx) / common.median(timings.torch):.2f}x",
            "",
            "",
        ),
    ]
    if timings.torch_cpu is not None:
        rows.append(
            (
                f"ONNX ({provider}) / torch on cpu, time",
                f"{common.median(timings.onnx) / common.median(timings.torch_cpu):.2f}x",
                "",
                "",
            )
        )
    ok_diff = agree.score_diff <= TARGET_SCORE_DIFF
    rows += [
        (
            "largest |score difference|, ONNX vs torch",
            f"{agree.score_diff:.2e}",
            f"<= {TARGET_SCORE_DIFF:g}",
            "met" if ok_diff else f"**missed** ({agree.score_diff:.2e})",
        ),
        (
            f"identical top-{k} indices, ONNX vs torch",
            f"{agree.identical} of {agree.rows} rows"
            + (
                f" (+{agree.near_ties} that differ only by near ties, |gap| <= {NEAR_TIE:g})" if agree.near_ties else ""
            ),
            f"{agree.rows} of {agree.rows} (near ties allowed)",
            "met" if agree.differ == 0 else f"**missed** ({agree.differ} rows differ)",
        ),
        ("load average at the end", common.load_average(), "", ""),
    ]
    notes = [
        f"- command: `{common.command_line()}`",
        f"- threads: torch {torch.get_num_threads()}; onnxruntime's CPU provider uses its own thread pool (one "
        "thread per physical core by default).",
    ]
    if provider == CUDA_PROVIDER:
        notes.append(
            "- the CUDA provider may run float32 products in TF32 where torch does not (torch's default for "
            "matmul is full float32), which shows in the score difference."
        )
    caution = common.contention_note("short operations")
    if caution:
        notes.append(caution)
    return common.markdown_table(rows), notes


def measure(args: argparse.Namespace, device: torch.device) -> tuple[str, list[str], list[str]]:
    """Exports the head, times both heads, compares them; returns the heading, table and notes."""
    setup = build(args, device)
    with tempfile.TemporaryDirectory(prefix="lavise_onnx_bench_") as tmp:
        path = Path(tmp) / "head.onnx"
        export_s = export(setup, path, args.k)
        onnx_bytes = path.stat().st_size
        head, skipped = open_head(path, device)
        if skipped:
            print(
                f"skipped: onnxruntime-gpu not importable on this machine ({skipped}); "
                f"reporting {head.providers[0]} instead",
                flush=True,
            )
        timings, agree = time_interleaved(setup, head, args, device)
    table, notes = report(args, device, head, skipped, export_s, onnx_bytes, timings, agree)
    heading = (
        f"ONNX head: onnxruntime ({head.providers[0]}) vs the PyTorch head ({device.type}), {args.vectors} pooled "
        f"vectors x {args.channels} channels, {args.vocabulary} words, k = {args.k}, {common.today()}"
    )
    return heading, table, notes


def check_k(args: argparse.Namespace) -> str | None:
    return f"--k must be at most --vocabulary ({args.vocabulary}), got {args.k}" if args.k > args.vocabulary else None


def main(argv: list[str] | None = None) -> int:
    return common.run_script(build_parser, measure, argv, check=check_k,
                             positive=("vectors", "channels", "dim", "vocabulary", "k", "repeats"))


if __name__ == "__main__":
    sys.exit(main())
