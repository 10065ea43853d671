"""The ``lavise-fast`` command: LaViSE from the shell.

Subcommands (``lavise-fast <command> --help`` shows each one's options and examples):

- ``demo``: the whole pipeline on the embedded ConceptWorld, in a few minutes on a CPU;
- ``train``: an explainer for one layer of a model, from a COCO folder, a Visual Genome folder or the world;
- ``explain``: every filter of that layer described in words, over a folder of images (or a COCO set, or the world);
- ``evaluate``: recall@5/10/20 of those words against object masks (a COCO set or the world);
- ``report``: the self-contained HTML report of a result;
- ``compare``: the concepts two results (the same network on two subsets) evoke more or less often;
- ``export-onnx``: an explainer's head (and the scoring of a vocabulary) as one ONNX file.

Models (``--model``): a torchvision model name or ``timm:NAME`` (a timm architecture; ``pip install
'lavise_fast[timm]'``) with ``--weights FILE`` (a state dict; nothing is downloaded), a TorchScript
file (its layers are its top-level children when it is an ``nn.Sequential``, else ``output``, the
file's output), or ``efficientnet-lite0`` (ImageNet-pretrained, from the PyPI package).

Memory: on Linux with glibc the command keeps freed memory for reuse (:mod:`lavise_fast.allocator`),
so that each batch's forward pass does not page-fault its activations afresh; ``--release-memory``
leaves glibc's default.

A bad argument or an unreadable input ends the command with exit status 2 and one line on stderr:
``lavise-fast <command>: error: <what was wrong>``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path

import torch

from lavise_fast.allocator import keep_freed_memory
from lavise_fast.data.folders import ImageFolder, ImagesOf
from lavise_fast.errors import InputError, LaviseError, MissingInputError
from lavise_fast.files import atomic_write, atomic_write_json, check_output
from lavise_fast.loaders import default_workers
from lavise_fast.models import load_model, model_layer
from lavise_fast.scoring import DEFAULT_SCORING, SCORINGS


class CommandError(InputError):
    """A bad argument or input found after parsing (reported as one line, exit status 2)."""


# ---------------------------------------------------------------------------------------------- image sets


def _world(spec: dict):
    from lavise_fast.data import ConceptWorld

    start, size = int(spec.get("start", 0)), int(spec["size"])
    world = ConceptWorld(start + size, int(spec.get("image_size", 224)), int(spec.get("seed", 0)),
                         objects_per_image=tuple(spec.get("objects_per_image", (1, 3))))
    return world if start == 0 else torch.utils.data.Subset(world, range(start, start + size))


def open_set(spec: dict, *, masks: bool):
    """The image set a target/reference record describes (``{"kind": "images"|"coco"|"vg"|"world", ...}``,
    as ``result.settings["target"]`` holds it): with ``masks``, reference items (image, masks, labels);
    else images only (image folders) or items (the others).

    Args:
        spec: the record.
        masks: whether the set must hold masks (evaluation) or images are enough (the report).
    """
    from lavise_fast.data import CocoInstances, VisualGenomeObjects

    kind = spec.get("kind")
    if kind == "images":
        if masks:
            raise CommandError("an image folder has no object masks: give --coco or --world (the same images, "
                               "in the same order)")
        return ImageFolder(spec["folder"], spec.get("resize", 256), spec.get("crop", 224), spec.get("files"))
    if kind == "coco":
        return CocoInstances(spec["images"], spec["annotations"])
    if kind == "vg":
        return VisualGenomeObjects(spec["images"], spec["objects"])
    if kind == "world":
        return _world(spec)
    raise CommandError(f"unknown image set kind {kind!r}")


def _set_spec(args: argparse.Namespace, *, allow_images: bool) -> dict | None:
    """The image set the options name (``--images``/``--coco``/``--vg``/``--world``), or None when none is given."""
    given = [name for name in ("images", "coco", "vg", "world") if getattr(args, name, None) is not None]
    if len(given) > 1:
        raise CommandError(f"give one image set, not {' and '.join('--' + g for g in given)}")
    if not given:
        return None
    kind = given[0]
    if kind == "images":
        if not allow_images:
            raise CommandError("--images is an image folder without masks; this command needs --coco or --world")
        folder = Path(args.images).resolve()
        dataset = ImageFolder(folder, args.resize, args.crop)
        return {"kind": "images", "folder": str(folder), "files": dataset.files, "resize": args.resize,
                "crop": args.crop}
    if kind == "coco":
        images, annotations = (str(Path(p).resolve()) for p in args.coco)
        return {"kind": "coco", "images": images, "annotations": annotations}
    if kind == "vg":
        images, objects = (str(Path(p).resolve()) for p in args.vg)
        return {"kind": "vg", "images": images, "objects": objects}
    size = args.world
    if size < 1:
        raise CommandError(f"--world must be at least 1 image, got {size}")
    low, high = args.world_objects
    return {"kind": "world", "size": size, "start": args.world_start, "image_size": args.world_image_size,
            "seed": args.world_seed, "objects_per_image": [low, high]}


def _add_set_options(parser: argparse.ArgumentParser, *, images: bool, vg: bool, title: str) -> None:
    group = parser.add_argument_group(title)
    if images:
        group.add_argument("--images", metavar="DIR", help="a folder of images (subfolders too), read in sorted order")
        group.add_argument("--resize", type=_positive, default=256, metavar="N",
                           help="--images: shorter side after resizing (default 256)")
        group.add_argument("--crop", type=_positive, default=224, metavar="N",
                           help="--images: side of the centre crop (default 224)")
    group.add_argument("--coco", nargs=2, metavar=("IMAGE_DIR", "ANNOTATIONS"),
                       help="a COCO instances set: its image folder and annotation JSON")
    if vg:
        group.add_argument("--vg", nargs=2, metavar=("IMAGE_DIR", "OBJECTS_JSON"),
                           help="a Visual Genome set: its image folder and objects JSON")
    group.add_argument("--world", type=int, metavar="N", help="N images of the embedded ConceptWorld")
    group.add_argument("--world-image-size", type=_positive, default=224, metavar="S",
                       help="--world: image side in pixels (default 224)")
    group.add_argument("--world-seed", type=_non_negative, default=0, metavar="SEED", help="--world: seed (default 0)")
    group.add_argument("--world-start", type=_non_negative, default=0, metavar="I",
                       help="--world: index of the first image (default 0)")
    group.add_argument("--world-objects", type=int, nargs=2, default=(1, 3), metavar=("LOW", "HIGH"),
                       help="--world: objects per image (default 1 3)")


# ---------------------------------------------------------------------------------------------- helpers


def _number(kind: type, expected: str, ok):
    """An argparse ``type=``: ``kind(text)``, refused with "expected <expected>" unless ``ok(value)``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive = _number(int, "a positive integer", lambda v: v >= 1)
_non_negative = _number(int, "an integer >= 0", lambda v: v >= 0)
_fraction = _number(float, "a number in (0, 1]", lambda v: 0.0 < v <= 1.0)


_MAX_FILTER = 1 << 20  # more channels than any layer has: indices above are refused before a list is built


def _filters(text: str) -> list[int]:
    """``"0-9,12"`` -> [0, ..., 9, 12]; indices above ``_MAX_FILTER`` are refused before any list is built."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            low, _, high = part.partition("-")
            low, high = int(low), int(high) if high else int(low)
            if high < low:
                raise ValueError
            if low < 0:
                raise argparse.ArgumentTypeError(f"filter indices must be >= 0, got {text!r}")
            if high >= _MAX_FILTER:
                raise argparse.ArgumentTypeError(f"filter index {high} is beyond any layer (at most {_MAX_FILTER - 1})")
            out += range(low, high + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected filter indices such as 0-9,12, got {text!r}") from None
    return out


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CommandError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda"):
        raise CommandError(f"--device {name}: lavise_fast runs on cpu or cuda (its kernels exist for those), "
                           f"not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: CUDA is not available here")
    return device


@contextlib.contextmanager
def _process_group(args: argparse.Namespace, device: torch.device):
    """With ``--distributed``: joins the process group that torchrun describes in the environment
    (NCCL on GPUs, each rank on the GPU of its LOCAL_RANK; gloo on CPUs) for the block and leaves it
    after; yields (rank, the rank's device). A failed exchange between ranks becomes one line, exit 2.
    Without it: yields (0, device)."""
    if not args.distributed:
        yield 0, device
        return
    import datetime

    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise CommandError(f"--distributed runs under torchrun (e.g. torchrun --nproc-per-node 4 -m lavise_fast.cli "
                           f"{args.command} ... --distributed); {', '.join(missing)} missing from the environment")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                         timeout=datetime.timedelta(seconds=args.timeout))
    try:
        yield torch.distributed.get_rank(), device
    except RuntimeError as error:
        if str(error).startswith("distributed sweep"):
            raise CommandError(str(error)) from None
        raise
    finally:
        torch.distributed.destroy_process_group()


def _add_distributed_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--distributed", action="store_true", help=f"run as one rank of a torchrun job: {what} "
                        "(NCCL on GPUs, gloo on CPUs)")
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS",
                        help="with --distributed: how long a rank waits for the others before failing (1800)")


def _inputs(args: argparse.Namespace) -> dict[str, str]:
    """Every input file of the command, by the option that names it: an output may be none of them."""
    found: dict[str, str] = {}
    for option in ("model", "weights", "glove", "vocabulary", "result", "evaluation", "feature_cache"):
        value = getattr(args, option, None)
        if isinstance(value, str) and Path(value).is_file():
            found[f"--{option.replace('_', '-')}"] = value
    explainers = getattr(args, "explainer", None)
    for value in [explainers] if isinstance(explainers, str) else explainers or []:
        found[f"--explainer {value}"] = value
    for option, index in (("coco", 1), ("vg", 1)):
        value = getattr(args, option, None)
        if value:
            found[f"--{option}"] = value[index]
    for n, value in enumerate(getattr(args, "results", None) or []):
        found[f"result {'ab'[n]}"] = value
    return found


def _output(path: str, args: argparse.Namespace, option: str = "--out") -> Path:
    """The output file ``path`` (of ``option``), checked before any work against the output policy
    (:mod:`lavise_fast.files`) and the command's inputs; its missing folders are created."""
    out = Path(path)
    if out.is_dir():
        raise CommandError(f"{option} {path} is a folder; give a file name")
    return check_output(out, option, _inputs(args), make_folders=True)


def _output_folder(path: str, args: argparse.Namespace, names: list[str]) -> Path:
    """The output folder ``path`` of several results (``NAME.json`` for each of ``names``), each file checked."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {path} is a file; with several explainers give a folder (one result per layer)")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        check_output(out / f"{name}.json", "--out", _inputs(args))
    return out


def _space(glove: str | None):
    from lavise_fast import semantics

    return semantics.GloVe(glove) if glove else semantics.default_space()


def _load_result(path: str):
    from lavise_fast.result import ExplainResult

    if not Path(path).is_file():
        raise MissingInputError(f"result file {path!r} does not exist")
    return ExplainResult.load(path)


# ---------------------------------------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace) -> int:
    from lavise_fast.demo import run_demo

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    print(f"lavise-fast demo: LaViSE end to end on the embedded ConceptWorld ({args.model}, {device}, "
          f"{torch.get_num_threads()} threads)", flush=True)
    overrides = {} if args.seed is None else {"seed": args.seed}
    summary = run_demo(args.out, args.model, cache=args.cache, device=device, progress=args.progress, **overrides)
    print()
    print(summary["table"])
    print()
    others = ", ".join(Path(summary["files"][name]).name for name in ("evaluation", "explainer", "model")
                       if name in summary["files"])
    print(f"  wrote {summary['files']['report']} and {summary['files']['result']} (and {others})")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from lavise_fast.training import train_explainer

    spec = _set_spec(args, allow_images=False)
    if spec is None:
        raise CommandError("give the reference set: --coco IMAGE_DIR ANNOTATIONS, --vg IMAGE_DIR OBJECTS_JSON or "
                           "--world N")
    out = _output(args.out, args)
    if args.feature_cache is not None:
        check_output(args.feature_cache, "--feature-cache", {k: v for k, v in _inputs(args).items()
                                                              if k != "--feature-cache"})
    device = _device(args.device)
    reference = open_set(spec, masks=True)
    if len(reference) == 0:
        raise CommandError("the reference set holds no image")
    model = load_model(args.model, args.weights, device)
    layer = model_layer(model, args.layer, reference[0][0][None].to(device))
    space = _space(args.glove)
    with _process_group(args, device) as (rank, device):
        model = model.to(device)
        explainer = train_explainer(model, reference, layer, space, anno_rate=args.anno_rate, epochs=args.epochs,
                                    batch_size=args.batch_size, device=device, seed=args.seed,
                                    feature_cache=args.feature_cache, distributed=args.distributed,
                                    progress=args.progress)
    if rank != 0:
        return 0  # every rank holds rank 0's head; rank 0 writes it
    explainer.save(out)
    print(f"trained an explainer for {layer} ({explainer.channels} filters) of {args.model} on {len(reference)} "
          f"reference images: {len(explainer.seen)} seen and {len(explainer.unseen)} unseen words, "
          f"space {explainer.space}; wrote {out}")
    return 0


def _vocabulary(choice: str, explainers, space):
    from lavise_fast import vocabularies
    from lavise_fast.semantics import Vocabulary

    if choice == "entities":
        words = vocabularies.entities()
    elif choice == "vg":
        words = vocabularies.visual_genome_labels()
    elif choice == "explainer":  # every explainer's seen and unseen words, each once, in order
        words = list(dict.fromkeys(w for e in explainers for w in (*e.seen, *e.unseen)))
    else:
        if not Path(choice).is_file():
            raise MissingInputError(f"--vocabulary {choice!r} is not entities, vg, explainer or an existing file")
        words = vocabularies.read_word_list(choice)
    return Vocabulary.from_words(words, space)


def _cmd_explain(args: argparse.Namespace) -> int:
    from lavise_fast.explainer import Explainer
    from lavise_fast.sweep import explain

    spec = _set_spec(args, allow_images=True)
    if spec is None:
        raise CommandError("give the target images: --images DIR, --coco IMAGE_DIR ANNOTATIONS or --world N")
    paths = args.explainer or []
    several = len(paths) > 1
    if several and args.layer:
        raise CommandError("--layer is for one explainer; with several, each explainer's own layer is explained")
    if not paths and args.glove:
        raise CommandError("--glove needs --explainer: the default explainer is trained in the default word space")
    out = None if several else _output(args.out, args)
    device = _device(args.device)
    explainers = [Explainer.load(path) for path in paths]
    space = _space(args.glove)
    for path, explainer in zip(paths, explainers, strict=True):
        if explainer.space and explainer.space != space.name:
            raise CommandError(f"the explainer {path} was trained in the word space {explainer.space!r}, not "
                               f"{space.name!r}" + ("" if args.glove else ": give --glove PATH"))
    if several:
        _check_one_explainer_per_layer(paths, explainers)
        out = _output_folder(args.out, args, [e.layer for e in explainers])
    if args.vocabulary not in ("entities", "vg", "explainer") and not Path(args.vocabulary).is_file():
        raise MissingInputError(f"--vocabulary {args.vocabulary!r} is not entities, vg, explainer or an existing file")
    vocabulary = _vocabulary(args.vocabulary, explainers, space) if explainers else None
    target = open_set(spec, masks=False)
    images = target if spec["kind"] == "images" else ImagesOf(target)
    model = load_model(args.model, args.weights, device)
    workers = args.workers if args.workers is not None else default_workers() if spec["kind"] == "images" else 0
    loader = torch.utils.data.DataLoader(images, batch_size=args.batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    if several:
        layers = [model_layer(model, e.layer, None) for e in explainers]
        explainer, layer = dict(zip(layers, explainers, strict=True)), layers
        filters = None if args.filters is None else dict.fromkeys(layers, args.filters)
    else:
        wanted = args.layer or (explainers[0].layer if explainers else None) or None
        explainer, filters = (explainers[0] if explainers else None), args.filters
        layer = None if wanted is None else model_layer(model, wanted, None)
    with _process_group(args, device) as (rank, device):
        model = model.to(device)
        if explainer is None:
            from lavise_fast.default_explainers import default_explainer

            explainer = default_explainer(model, loader, layer=layer, device=device, distributed=args.distributed,
                                          progress=args.progress)
            vocabulary = _vocabulary(args.vocabulary, [explainer], space)
        results = explain(model, loader, explainer, layer=layer, filters=filters, method=args.method,
                          scoring=args.scoring, top_images=args.top_images, words_per_image=args.words_per_image,
                          num_words=args.num_words,
                          vocabulary=vocabulary, device=device, checkpoint=args.checkpoint,
                          checkpoint_every=args.checkpoint_every, distributed=args.distributed,
                          progress=args.progress)
    if rank != 0:
        return 0  # every rank holds the result; rank 0 writes it
    if not several:
        results = {results.settings.layer: results}
    for name, result in results.items():
        result.settings["target"] = spec
        result.settings["model"] = {
            "model": str(Path(args.model).resolve()) if Path(args.model).is_file() else args.model,
            "weights": str(Path(args.weights).resolve()) if args.weights else None,
        }
        path = out / f"{name}.json" if several else out
        result.save(path)
        print(f"explained {len(result.filters)} filters of {name} on {result.settings['images']} images; "
              f"wrote {path}")
        for k, words in list(zip(result.filters, result.words, strict=True))[:5]:
            print(f"  filter {k}: {', '.join(words[:5]) or '(no words)'}")
        if len(result.filters) > 5:
            print(f"  ... ({len(result.filters) - 5} more)")
    return 0


def _check_one_explainer_per_layer(paths: list[str], explainers) -> None:
    """Several explainers must each name their layer, and no two the same one."""
    seen: dict[str, str] = {}
    for path, explainer in zip(paths, explainers, strict=True):
        if not explainer.layer:
            raise CommandError(f"the explainer {path} records no layer, so it cannot be told apart from the others; "
                               "give it alone, with --layer")
        if explainer.layer in seen:
            raise CommandError(f"the explainers {seen[explainer.layer]} and {path} are both for layer "
                               f"{explainer.layer!r}; give one explainer per layer")
        seen[explainer.layer] = path


def _result_set(args: argparse.Namespace, result, *, masks: bool, allow_images: bool):
    spec = _set_spec(args, allow_images=allow_images)
    if spec is None:
        spec = result.settings.get("target")
        if spec is None:
            return None, None
        if masks and spec.get("kind") == "images":
            raise CommandError("the result was explained on an image folder, which has no masks: give --coco or "
                               "--world (the same images, in the same order)")
    return spec, open_set(spec, masks=masks)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from lavise_fast.evaluation import evaluate, evaluation_table

    out = _output(args.out, args)
    result = _load_result(args.result)
    device = _device(args.device)
    spec, reference = _result_set(args, result, masks=True, allow_images=False)
    if reference is None:
        raise CommandError("give the reference with masks: --coco IMAGE_DIR ANNOTATIONS or --world N (the images "
                           "the result was explained on, in the same order)")
    model = load_model(args.model, args.weights, device)
    evaluation = evaluate(result, model, reference, iou_threshold=args.iou_threshold, batch_size=args.batch_size,
                          device=device, progress=args.progress)
    evaluation.save(out)
    print(f"evaluated {len(result.filters)} filters of {result.settings.layer} on {len(reference)} images "
          f"(IoU > {args.iou_threshold}); wrote {out}")
    print("\n".join(evaluation_table(evaluation)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from lavise_fast.evaluation import Evaluation
    from lavise_fast.report import write_report

    out = _output(args.out, args)
    result = _load_result(args.result)
    device = _device(args.device)
    images = None
    if not args.no_images:
        images = _result_set(args, result, masks=False, allow_images=True)[1]
    elif any(getattr(args, n, None) is not None for n in ("images", "coco", "world")):
        raise CommandError("--no-images and an image set contradict each other")
    model = None
    if args.model is not None:
        if images is None:
            raise CommandError("--model draws activation maps over the top images: it needs the images (the "
                               "result's target, or --images/--coco/--world), not --no-images")
        model = load_model(args.model, args.weights, device)
    evaluation = None
    if args.evaluation:
        if not Path(args.evaluation).is_file():
            raise MissingInputError(f"--evaluation {args.evaluation!r} does not exist")
        evaluation = Evaluation.load(args.evaluation)
    write_report(result, out, images=images, model=model, evaluation=evaluation, max_images=args.max_images,
                 thumbnail=args.thumbnail, title=args.title, device=device, progress=args.progress)
    print(f"wrote {out} ({len(result.filters)} filters{', with pictures' if images is not None else ''})")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from lavise_fast.bias import compare, compare_plot

    plot = _output(args.out, args) if args.out else None
    table = _output(args.table, args, "--table") if args.table else None
    if plot is not None and table is not None and plot.resolve() == table.resolve():
        raise CommandError(f"--out and --table name the same file {args.out!r}")
    a, b = (_load_result(p) for p in args.results)
    names = tuple(args.names) if args.names else tuple(Path(p).stem for p in args.results)
    if names[0] == names[1]:
        names = (f"{names[0]} (a)", f"{names[1]} (b)")
    rows = compare(a, b, num_words=args.num_words, names=names)
    if plot is not None:
        compare_plot(rows, plot, top=args.top, names=names)
    if table is not None:
        if table.suffix.lower() == ".csv":
            import csv
            import io

            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=["concept", "count_a", "count_b", "share_a", "share_b",
                                                        "difference"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write(table, buffer.getvalue())
        else:
            atomic_write_json(table, {"names": list(names), "rows": rows}, indent=1)
    width = max([len("concept"), *(len(str(r["concept"])) for r in rows)])
    head_a, head_b = (n[:12] for n in names)
    print(f"{'concept':<{width}}  {head_a:>12}  {head_b:>12}  difference")
    shown = rows if len(rows) <= 2 * args.top else rows[: args.top] + rows[-args.top :]
    for n, r in enumerate(shown):
        if len(rows) > 2 * args.top and n == args.top:
            print(f"{'...':<{width}}")
        print(f"{r['concept']:<{width}}  {r['count_a']:>12}  {r['count_b']:>12}  {r['difference']:+.3f}")
    written = [p for p in (args.out, args.table) if p]
    if written:
        print(f"wrote {' and '.join(written)}")
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from lavise_fast.explainer import Explainer
    from lavise_fast.onnx import export_onnx

    if args.explainer is None or args.out is None:
        raise CommandError("give the explainer file and --out FILE.onnx")
    out = _output(args.out, args)
    explainer = Explainer.load(args.explainer)
    vocabulary = None
    if args.vocabulary is not None:
        space = _space(args.glove)
        vocabulary = _vocabulary(args.vocabulary, [explainer], space)
    export_onnx(explainer, out, vocabulary=vocabulary)
    print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------- parser

_EXAMPLES = {
    "demo": """examples:
  lavise-fast demo                          # small ResNet on ConceptWorld, files in ./lavise-demo
  lavise-fast demo --out /tmp/demo --model efficientnet-lite0
  lavise-fast demo --no-cache --threads 2   # retrain the small ResNet, on 2 CPU threads""",
    "train": """examples:
  lavise-fast train --model resnet18 --weights resnet18.pth --layer layer4 \\
      --coco val2017/ annotations/instances_val2017.json --out explainer.pt
  lavise-fast train --model resnet18 --weights resnet18.pth --layer layer4 --vg images/ objects.json \\
      --glove glove.6B.300d.txt --anno-rate 0.5 --epochs 10 --out explainer-glove.pt
  lavise-fast train --model lavise-demo/model.pt --layer layer3 --world 1000 --world-image-size 64 --out e.pt""",
    "explain": """examples:
  lavise-fast explain --model resnet18 --weights resnet18.pth --explainer explainer.pt \\
      --images photos/ --out result.json
  lavise-fast explain --model lavise-demo/model.pt --explainer lavise-demo/explainer.pt \\
      --world 500 --world-image-size 64 --vocabulary explainer --num-words 20 --out result.json
  lavise-fast explain --model traced.pt --explainer explainer.pt --images photos/ --filters 0-31 \\
      --method activation --top-images 50 --out result.json
  lavise-fast explain --model resnet50 --weights r50.pth --explainer e.pt --images imagenet/val/ \\
      --checkpoint sweep-ckpt/ --out result.json             # run it again after a crash to resume
  lavise-fast explain --model resnet50 --weights r50.pth --explainer e3.pt e4.pt --images photos/ \
      --out results/                     # layer3 and layer4 in one pass: results/layer3.json, results/layer4.json
  torchrun --nproc-per-node 4 -m lavise_fast.cli explain --distributed --model resnet50 --weights r50.pth \\
      --explainer e.pt --images imagenet/val/ --out result.json""",
    "evaluate": """examples:
  lavise-fast evaluate --model lavise-demo/model.pt --result lavise-demo/result.json --out evaluation.json
  lavise-fast evaluate --model resnet18 --weights resnet18.pth --result result.json \\
      --coco val2017/ annotations/instances_val2017.json --out evaluation.json""",
    "report": """examples:
  lavise-fast report --result result.json --out report.html        # images from the result's target set
  lavise-fast report --result lavise-demo/result.json --model lavise-demo/model.pt \\
      --evaluation lavise-demo/evaluation.json --out report.html   # with activation maps and recall
  lavise-fast report --result result.json --no-images --out words-only.html""",
    "compare": """examples:
  lavise-fast compare indoor.json outdoor.json --out bias.svg --table bias.csv
  lavise-fast compare a.json b.json --names men women --num-words 5 --top 10""",
    "export-onnx": """examples:
  lavise-fast export-onnx explainer.pt --out head.onnx
  lavise-fast export-onnx explainer.pt --vocabulary entities --out head-and-words.onnx""",
}


def _add_model_options(parser: argparse.ArgumentParser, *, layer: bool) -> None:
    parser.add_argument("--model", required=True, metavar="MODEL",
                        help="a torchvision model name or timm:NAME (with --weights), a TorchScript file, or "
                             "efficientnet-lite0")
    parser.add_argument("--weights", metavar="FILE", help="state dict for a torchvision or timm model name")
    if layer:
        parser.add_argument("--layer", metavar="NAME",
                            help="dotted layer name (default: the model's last 4-D feature map)")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    parser.add_argument("--release-memory", dest="keep_memory", action="store_false",
                        help="let glibc return freed memory to the system between batches (its default); by "
                             "default this command keeps it for reuse, which spares the CPU forward pass "
                             "millions of page faults (lavise_fast.allocator)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lavise-fast",
        description="lavise-fast: make any CNN describe its own filters in words (LaViSE, CVPR 2022).",
        epilog="run 'lavise-fast <command> --help' for a command's options and examples",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text, epilog=_EXAMPLES[name],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_argument("--debug", action="store_true",
                             help="show the traceback of any error (input errors are otherwise one line)")
        return command

    demo = add("demo", "LaViSE end to end on the embedded ConceptWorld: train a target CNN (cached), an explainer "
                       "(half the words unseen), explain, evaluate, write report.html and result.json")
    from lavise_fast.demo import DEMO_MODELS

    demo.add_argument("--out", default="lavise-demo", metavar="DIR", help="output folder (default lavise-demo)")
    demo.add_argument("--model", choices=DEMO_MODELS, default="small-resnet",
                      help="the target CNN (default small-resnet)")
    demo.add_argument("--seed", type=_non_negative, help="seed of the world, the split and the training (default 0)")
    demo.add_argument("--no-cache", dest="cache", action="store_false",
                      help="train the small ResNet even when a cached one exists, and do not cache it")
    demo.add_argument("--threads", type=_positive, metavar="N", help="CPU threads for torch (default: torch's)")
    _add_common(demo)

    train = add("train", "train an explainer for one layer of a model on a reference set with object masks")
    _add_model_options(train, layer=True)
    _add_set_options(train, images=False, vg=True, title="reference set (one of)")
    train.add_argument("--glove", metavar="PATH", help="word space: a GloVe/word2vec text file (default: MiniLM)")
    train.add_argument("--anno-rate", type=_fraction, default=0.5, metavar="R",
                       help="share of the concept words that supervise (default 0.5)")
    train.add_argument("--epochs", type=_positive, default=10, help="epochs (default 10)")
    train.add_argument("--batch-size", type=_positive, default=256, help="head training batch (default 256)")
    train.add_argument("--seed", type=_non_negative, default=0, help="seed of the split and the head (default 0)")
    train.add_argument("--feature-cache", metavar="FILE.npy", help="keep the pooled features in this file")
    _add_distributed_options(train, "each rank pools its share of the reference set, every rank trains on all of "
                                    "it, rank 0 writes the explainer")
    train.add_argument("--out", required=True, metavar="FILE", help="the explainer file to write (.pt)")
    _add_common(train)

    explain = add("explain", "describe every filter of a layer in words over a set of target images")
    _add_model_options(explain, layer=True)
    explain.add_argument("--explainer", nargs="+", metavar="FILE",
                         help="an explainer written by train; several (one per layer) explain their layers in one "
                              "pass, and --out is then a folder that gets LAYER.json for each; without it, the "
                              "default explainer of the layer (trained on 1,000 embedded ConceptWorld images in "
                              "the default word space, cached)")
    _add_set_options(explain, images=True, vg=False, title="target images (one of)")
    explain.add_argument("--vocabulary", default="entities", metavar="WORDS",
                         help="entities (the 1,202 LaViSE entities, default), vg (Visual Genome labels), explainer "
                              "(its seen and unseen words) or a text file, one word per line")
    explain.add_argument("--glove", metavar="PATH", help="the GloVe file the explainer was trained with")
    explain.add_argument("--method", choices=("projection", "activation", "image", "original"), default="projection",
                         help="inference method (default projection, the paper's)")
    explain.add_argument("--scoring", choices=SCORINGS, default=DEFAULT_SCORING,
                         help=f"how a filter's top images become its words (default {DEFAULT_SCORING}: how much more "
                              "its top images evoke a word than the layer's images do; vote: the paper's flat vote)")
    explain.add_argument("--filters", type=_filters, metavar="LIST", help="filters to explain, e.g. 0-9,12 "
                         "(default all)")
    explain.add_argument("--top-images", type=_positive, default=25, metavar="P", help="images per filter (25)")
    explain.add_argument("--words-per-image", type=_positive, default=5, metavar="S",
                         help="words each top image votes for, with --scoring vote (5)")
    explain.add_argument("--num-words", type=_positive, default=10, metavar="N", help="words kept per filter (10)")
    explain.add_argument("--batch-size", type=_positive, default=32, help="images per batch (32)")
    explain.add_argument("--workers", type=_non_negative, default=None,
                         help="DataLoader worker processes reading images (default: with --images, the cores this "
                              "process may use, at most 8; else 0, in this process)")
    explain.add_argument("--checkpoint", metavar="DIR", help="save the sweep's state in this folder and resume "
                         "from it after a crash (the same command again)")
    explain.add_argument("--checkpoint-every", type=_positive, default=100, metavar="N",
                         help="batches between checkpoints (100)")
    _add_distributed_options(explain, "each rank reads its share of the images, rank 0 writes the merged result")
    explain.add_argument("--out", required=True, metavar="FILE",
                         help="the result file to write (.json); with several explainers, a folder")
    _add_common(explain)

    evaluate = add("evaluate", "recall@5/10/20 of a result's words against object masks, seen and unseen words "
                               "apart, and each filter's Network-Dissection label")
    _add_model_options(evaluate, layer=False)
    evaluate.add_argument("--result", required=True, metavar="FILE", help="a result written by explain")
    _add_set_options(evaluate, images=False, vg=False,
                     title="reference with masks (default: the result's target set, when it has masks)")
    evaluate.add_argument("--iou-threshold", type=float, default=0.04, metavar="T",
                          help="IoU above which a word is ground truth (0.04)")
    evaluate.add_argument("--batch-size", type=_positive, default=32, help="images per batch (32)")
    evaluate.add_argument("--out", required=True, metavar="FILE", help="the evaluation file to write (.json)")
    _add_common(evaluate)

    report = add("report", "write the self-contained HTML report of a result")
    report.add_argument("--result", required=True, metavar="FILE", help="a result written by explain")
    _add_set_options(report, images=True, vg=False, title="target images (default: the result's target set)")
    report.add_argument("--no-images", action="store_true", help="words and scores only, no pictures")
    report.add_argument("--model", metavar="MODEL", help="draw each filter's activation map over its top images")
    report.add_argument("--weights", metavar="FILE", help="state dict for a torchvision or timm model name")
    report.add_argument("--evaluation", metavar="FILE", help="an evaluation written by evaluate (recall, ND labels)")
    report.add_argument("--max-images", type=_non_negative, default=8, metavar="N", help="top images shown (8)")
    report.add_argument("--thumbnail", type=_positive, default=96, metavar="PX", help="picture size (96)")
    report.add_argument("--title", help="page title (default: the layer's name)")
    report.add_argument("--out", required=True, metavar="FILE", help="the HTML file to write")
    _add_common(report)

    compare = add("compare", "rank the concepts two results (one network, two image subsets) evoke more or less "
                             "often; print the table, write an SVG plot and/or the table")
    compare.add_argument("results", nargs=2, metavar="RESULT", help="two result files written by explain")
    compare.add_argument("--names", nargs=2, metavar=("A", "B"), help="names of the two subsets (default: file names)")
    compare.add_argument("--num-words", type=_positive, metavar="N", help="count only each filter's first N words")
    compare.add_argument("--top", type=_positive, default=15, metavar="N",
                         help="concepts shown at each end (15)")
    compare.add_argument("--out", metavar="FILE.svg", help="write the plot (SVG)")
    compare.add_argument("--table", metavar="FILE", help="write the table (.csv, else JSON)")

    export = add("export-onnx", "export an explainer's head (and, with --vocabulary, the scoring of those words) "
                                "to one ONNX file")
    export.add_argument("explainer", nargs="?", metavar="EXPLAINER", help="an explainer written by train")
    export.add_argument("--vocabulary", metavar="WORDS",
                        help="also score against these words: entities, vg, explainer or a text file")
    export.add_argument("--glove", metavar="PATH", help="the GloVe file the explainer was trained with")
    export.add_argument("--out", metavar="FILE", help="the ONNX file to write")
    return parser


_COMMANDS = {
    "demo": _cmd_demo,
    "train": _cmd_train,
    "explain": _cmd_explain,
    "evaluate": _cmd_evaluate,
    "report": _cmd_report,
    "compare": _cmd_compare,
    "export-onnx": _cmd_export_onnx,
}


def _one_line(error: BaseException) -> str:
    text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: keep the original message
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    text = " ".join(text.split())
    return text or type(error).__name__


def _warning_line(command: str):
    """``warnings.showwarning`` for the command line: one line per warning, ``lavise-fast <command>: warning: ...``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"lavise-fast {command}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)

    return show


def main(argv: list[str] | None = None) -> int:
    """Runs ``lavise-fast`` with ``argv`` (default ``sys.argv[1:]``) and returns the exit status: 0;
    2 for a bad argument or an input error (:class:`lavise_fast.errors.LaviseError`, one line on
    stderr; ``--debug`` shows its traceback); 130 on Ctrl-C (one line). Any other exception is a bug
    and shows its traceback.

    Args:
        argv: the command line after the program name; None: ``sys.argv[1:]``.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) and bad arguments (2, its message already printed)
        return int(exit_.code or 0)
    if getattr(args, "keep_memory", False):
        keep_freed_memory()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line(args.command)
            return _COMMANDS[args.command](args)
    except LaviseError as error:
        if args.debug:
            raise
        print(f"lavise-fast {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"lavise-fast {args.command}: interrupted (outputs are written atomically: none is left half-written)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
