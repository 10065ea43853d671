"""A tiny seeded CNN with three layers, random explainers, a vocabulary and a dataset of random
images: the setting of the multi-layer, checkpoint and distributed tests (also imported by the
scripts those tests run in subprocesses, so that every process builds exactly the same)."""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from lavise_fast.explainer import Explainer
from lavise_fast.semantics import Static, Vocabulary

LAYERS = ["block1", "block2", "block3"]
DIM = 12


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("block1", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())),
        ("block2", nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())),
        ("block3", nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU())),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(24, 5)),
    ])).eval()


def random_batch_norm(module: nn.Module) -> nn.Module:
    """Gives every BatchNorm1d of ``module`` non-trivial running statistics and affine weights, as
    training would (seeded by the caller's generator state). Returns the module."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return module


def explainers() -> dict[str, Explainer]:
    torch.manual_seed(1)
    out = {}
    for name, channels in zip(LAYERS, (8, 16, 24), strict=True):
        expl = Explainer(channels, DIM, layer=name, space="sweep-test").eval()
        expl.trained = True
        out[name] = expl
    return out


class ToTokens(nn.Module):
    """[N, C, h, w] -> [N, 1 + h * w, C]: a class token, then the positions in row-major order (a ViT's layout)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cls.expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], 1)


class TokenMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


def model_for(layers) -> nn.Module:
    """The tiny CNN; for layers holding ``"tokens"``, the tiny CNN whose last map goes on as a ViT's tokens."""
    model = tiny_model()
    if "tokens" not in ([layers] if isinstance(layers, str) else layers):
        return model
    torch.manual_seed(4)
    return nn.Sequential(OrderedDict([*((name, getattr(model, name)) for name in LAYERS), ("tokens", ToTokens(24)),
                                      ("pool", TokenMean()), ("fc", nn.Linear(24, 5))])).eval()


def explainers_for(layers):
    """The explainer of ``layers`` (a name), or a dict of them (a list of names); ``"tokens"`` has its own."""
    expls = explainers()
    torch.manual_seed(5)
    expls["tokens"] = Explainer(24, DIM, layer="tokens", space="sweep-test").eval()
    expls["tokens"].trained = True
    return {layer: expls[layer] for layer in layers} if isinstance(layers, list) else expls[layers]


def vocabulary() -> Vocabulary:
    g = torch.Generator().manual_seed(2)
    words = [f"w{i}" for i in range(40)]
    return Vocabulary.from_words(words, Static(words, torch.randn(40, DIM, generator=g), name="sweep-test"))


class RandomImages(torch.utils.data.Dataset):
    """``n`` seeded random images [3, 24, 24]; with ``stall_at`` (and a ``marker`` path) item
    ``stall_at`` writes the marker and sleeps, so that a test can kill the process mid-sweep;
    with ``die_at`` the process exits at once there (a dying rank)."""

    def __init__(self, n: int, stall_at: int | None = None, marker: str | None = None,
                 die_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(3)
        self.images = torch.randn(n, 3, 24, 24, generator=g) * 2
        self.stall_at, self.marker, self.die_at = stall_at, marker, die_at
        self.loaded = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == self.die_at:
            os._exit(3)
        if i == self.stall_at:
            Path(self.marker).write_text("stalled")
            time.sleep(600)
        self.loaded += 1
        return self.images[i]


def loader(dataset: torch.utils.data.Dataset, batch_size: int = 5) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)


def same(a, b) -> None:
    """Asserts two ExplainResults (or dicts of them) hold the same filters, words, top images and thresholds."""
    if isinstance(a, dict):
        assert list(a) == list(b)
        for name in a:
            same(a[name], b[name])
        return
    assert a.filters == b.filters
    assert a.words == b.words
    assert a.top_images == b.top_images
    assert a.top_activations == b.top_activations
    assert a.thresholds == b.thresholds
    # Scores are log-probabilities of cosines: pooled vectors computed in other batches round differently.
    for x, y in zip(a.scores, b.scores, strict=True):
        assert x == pytest.approx(y, rel=1e-5, abs=1e-5)
    assert [[(g["images"], g["words"]) for g in groups] for groups in a.groups] == \
        [[(g["images"], g["words"]) for g in groups] for groups in b.groups]
    assert a.settings == b.settings


def pooled(distributed: bool = False, cache=None):
    """The pooled reference features (block2) of the small ConceptWorld of :func:`reference_training`."""
    from lavise_fast.data.world import ConceptWorld
    from lavise_fast.pooling import pool_reference

    world = ConceptWorld(size=20, image_size=24, seed=0)
    return pool_reference(tiny_model(), world, "block2", batch_size=8, distributed=distributed, cache=cache,
                          progress=False)


def reference_training(distributed: bool = False) -> tuple[torch.Tensor, list[str], Explainer]:
    """The pooled reference features (block2) of a small ConceptWorld and an explainer trained on them."""
    import torch

    from lavise_fast.data.world import ConceptWorld
    from lavise_fast.training import train_explainer

    world = ConceptWorld(size=20, image_size=24, seed=0)
    g = torch.Generator().manual_seed(4)
    space = Static(world.concepts, torch.randn(len(world.concepts), DIM, generator=g), name="sweep-test")
    vectors, labels, _ = pooled(distributed)
    expl = train_explainer(tiny_model(), world, "block2", space, epochs=2, distributed=distributed, progress=False)
    return vectors, labels, expl
