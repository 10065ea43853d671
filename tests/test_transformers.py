"""Transformer and channels-last layers (torchvision's and timm's ViT, Swin and ConvNeXt, random
weights) explained like CNN feature maps.

The reference is the layer's output put on its grid by a naive loop written here, inside a copy of
the model (``NaiveGrid``): training, the four methods, evaluation and a resumed checkpoint on the
transformer's layer must give what they give on that naive grid."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from test_explainer import COLOURS, Patches
from torch import nn
from torchvision.models.convnext import CNBlockConfig

from lavise_fast import evaluate, grids
from lavise_fast.layers import LayerFeatures, default_layer, layer_features
from lavise_fast.semantics import Static, Vocabulary
from lavise_fast.sweep import explain
from lavise_fast.training import train_explainer

timm = pytest.importorskip("timm")


def naive_grid(output: torch.Tensor, kind: str, prefix: int = 0, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """[N, C, h, w] from a layer's output, one position at a time."""
    if kind == "nchw":
        return output.clone()
    if kind == "nhwc":
        n, h, w, c = output.shape
        out = torch.empty(n, c, h, w, dtype=output.dtype)
        for i in range(h):
            for j in range(w):
                out[:, :, i, j] = output[:, i, j, :]
        return out
    n, t, d = output.shape
    h, w = grid if grid is not None else (math.isqrt(t - prefix),) * 2
    out = torch.empty(n, d, h, w, dtype=output.dtype)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = output[:, prefix + i * w + j, :]
    return out


class NaiveGrid(nn.Module):
    """Holds ``model``; a forward hook on its layer sends the layer's output through the child
    ``grid``, which puts it on its grid with :func:`naive_grid`. Explained at layer ``"grid"``, whose
    hook stops the pass there."""

    def __init__(self, model: nn.Module, layer: str, kind: str, prefix: int = 0, grid=None) -> None:
        super().__init__()
        self.model = model
        self.grid = _Grid(kind, prefix, grid)
        dict(model.named_modules())[layer].register_forward_hook(lambda m, i, out: self.grid(out))

    def forward(self, x):
        return self.model(x)


class _Grid(nn.Module):
    def __init__(self, kind, prefix, grid):
        super().__init__()
        self.kind, self.prefix, self.grid_ = kind, prefix, grid

    def forward(self, x):
        return naive_grid(x, self.kind, self.prefix, self.grid_)


def _seeded(build):
    torch.manual_seed(0)
    return build().eval()


# name: (builder, layer to explain, how its output reads, the default layer)
MODELS = {
    "tv-vit": (lambda: torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                            hidden_dim=32, mlp_dim=64, num_classes=10),
               "encoder.layers.encoder_layer_1", ("tokens", 1, None), "encoder.layers.encoder_layer_1"),
    "tv-swin": (lambda: torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1],
                                                           num_heads=[1, 2], window_size=[2, 2], num_classes=10),
                "features.3", ("nhwc", 0, None), "features.3"),
    "tv-convnext": (lambda: torchvision.models.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)],
                                                        num_classes=10),
                    "features.3.0.block.3", ("nhwc", 0, None), "features.3"),
    "timm-vit-registers": (lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                                     patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=10,
                                                     reg_tokens=2),
                           "blocks.1", ("tokens", 3, (4, 4)), "blocks.1"),
    "timm-deit-distilled": (lambda: timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False,
                                                      img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2,
                                                      num_classes=10),
                            "blocks.0", ("tokens", 2, (4, 4)), "blocks.1"),
    "timm-swin": (lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32,
                                            window_size=2, embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                                            num_classes=10),
                  "layers.1", ("nhwc", 0, None), "layers.1"),
    "timm-convnext": (lambda: timm.create_model("convnext_atto", pretrained=False, depths=(1, 1, 1, 1),
                                                output_stride=16,
                                                dims=(8, 16, 24, 32), num_classes=10),
                      "stages.3", ("nchw", 0, None), "stages"),  # a CNN: the outermost module giving the last map
}


@pytest.fixture(scope="module")
def space():
    g = torch.Generator().manual_seed(1)
    words = list(COLOURS) + [f"word{i}" for i in range(12)]
    return Static(words, torch.randn(len(words), 16, generator=g), name="test"), words


# ------------------------------------------------------------------------------------------------ grids


@pytest.mark.parametrize("seed", range(6))
def test_token_and_channels_last_grids_equal_a_naive_reshape(seed):
    g = torch.Generator().manual_seed(seed)
    n, d = (int(v) for v in torch.randint(1, 5, (2,), generator=g))
    h, w = (int(v) for v in torch.randint(1, 6, (2,), generator=g))
    prefix = int(torch.randint(0, 6, (), generator=g))
    tokens = torch.randn(n, prefix + h * w, d, generator=g)
    got = grids.as_feature_map(tokens, grids.Layout("tokens", prefix, (h, w)))
    assert got.shape == (n, d, h, w)
    torch.testing.assert_close(got, naive_grid(tokens, "tokens", prefix, (h, w)), rtol=0, atol=0)
    last = torch.randn(n, h, w, d, generator=g)
    torch.testing.assert_close(grids.as_feature_map(last, grids.Layout("nhwc")), naive_grid(last, "nhwc"),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=rf"layer 'blk' outputs {prefix + h * w + 1} tokens"):
        grids.as_feature_map(torch.randn(n, prefix + h * w + 1, d), grids.Layout("tokens", prefix, (h, w)), "blk")


@pytest.mark.parametrize("name", list(MODELS))
def test_each_model_layer_is_read_on_its_grid_and_the_default_is_the_last_block(name):
    build, layer, (kind, prefix, grid), default = MODELS[name]
    model = _seeded(build)
    images = torch.randn(2, 3, 32, 32)
    raw = {}
    dict(model.named_modules())[layer].register_forward_hook(lambda m, i, out: raw.setdefault("out", out))
    with LayerFeatures(model, [layer]) as tap:
        got = tap(images)[layer]
        assert tap.layouts[layer] == grids.Layout(kind, prefix, grid if kind == "tokens" else None) or (
            grid is None or tap.layouts[layer].grid is None)
    torch.testing.assert_close(got, naive_grid(raw["out"], kind, prefix, grid), rtol=0, atol=0)
    assert got.is_contiguous() or kind == "nchw"  # rearranged maps are made contiguous
    assert default_layer(model, images[:1]) == default


def test_swin_stage_has_its_channels_as_filters_and_a_wrong_override_is_a_clear_error(space):
    model = _seeded(MODELS["tv-swin"][0])
    images = torch.randn(2, 3, 32, 32)
    assert layer_features(model, "features.3", images).shape == (2, 32, 4, 4)  # not 4 filters on a 4x32 grid
    grids.set_layout(model.features[3], "tokens", prefix=1)
    try:
        with pytest.raises(ValueError, match=r"layer 'features.3' outputs shape \(2, 4, 4, 32\), not tokens"):
            layer_features(model, "features.3", images)
    finally:
        grids.set_layout(model.features[3], None)
    with pytest.raises(ValueError, match=r"layer 'head' outputs a 2-D tensor of shape \(2, 10\)"):
        layer_features(model, "head", images)


def test_a_grid_the_model_does_not_state_is_guessed_or_overridden():
    seq = nn.Sequential(nn.Identity())
    x = torch.randn(2, 7, 4)  # 7 tokens: the fewest leading tokens that leave a square are 3 (2 x 2)
    assert grids.find_layout("0", seq[0], x) == grids.Layout("tokens", 3)
    grids.set_layout(seq[0], "tokens", prefix=1, grid=(2, 3))
    try:
        torch.testing.assert_close(layer_features(seq, "0", x), naive_grid(x, "tokens", 1, (2, 3)), rtol=0, atol=0)
    finally:
        grids.set_layout(seq[0], None)
    with pytest.raises(ValueError, match="grid must be two positive ints"):
        grids.set_layout(seq[0], "tokens", grid=(0, 3))


# ------------------------------------------------------------------------------------------------ the pipeline


def _explained(model, layer, space, method, **kw):
    space, words = space
    expl = train_explainer(model, Patches(24), layer, space, epochs=2, progress=False)
    images = [torch.stack([Patches(10, seed=3)[i][0] for i in range(j, j + 5)]) for j in (0, 5)]
    result = explain(model, images, expl, layer=layer, method=method, vocabulary=Vocabulary.from_words(
        words, space), top_images=3, words_per_image=2, num_words=3, progress=False, **kw)
    return expl, result


@pytest.mark.parametrize(("name", "method"), [
    ("tv-vit", "projection"), ("tv-vit", "image"), ("tv-swin", "activation"), ("tv-convnext", "original"),
    ("timm-vit-registers", "activation"), ("timm-swin", "projection"), ("timm-convnext", "image"),
])
def test_train_and_explain_equal_the_naive_grid(space, name, method):
    build, layer, (kind, prefix, grid), _ = MODELS[name]
    expl, result = _explained(_seeded(build), layer, space, method)
    naive_expl, naive = _explained(NaiveGrid(_seeded(build), layer, kind, prefix, grid), "grid", space, method)
    for a, b in zip(expl.head.parameters(), naive_expl.head.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert len(result.words) == expl.channels
    assert result.top_images == naive.top_images
    torch.testing.assert_close(torch.tensor(result.thresholds), torch.tensor(naive.thresholds), rtol=1e-5, atol=1e-6)
    assert result.words == naive.words
    assert result.settings.layout == grids.Layout(kind, prefix, grid if kind == "tokens" else None).describe() or (
        kind == "tokens" and result.settings.layout.startswith(f"tokens: the first {prefix} dropped"))


def test_evaluate_report_and_a_resumed_checkpoint_on_a_vit(space, tmp_path):
    build, layer, (kind, prefix, grid), _ = MODELS["timm-vit-registers"]
    model = _seeded(build)
    expl, result = _explained(model, layer, space, "projection")
    ev = evaluate(result, model, Patches(10, seed=3), shuffles=2, progress=False)
    naive_model = NaiveGrid(_seeded(build), layer, kind, prefix, grid)
    naive_expl, naive = _explained(naive_model, "grid", space, "projection")
    naive_ev = evaluate(naive, naive_model, Patches(10, seed=3), shuffles=2, progress=False)
    assert ev.recall == naive_ev.recall and ev.dissection == naive_ev.dissection and ev.pairs > 0

    images = [torch.stack([Patches(10, seed=3)[i][0] for i in range(j, j + 5)]) for j in (0, 5)]
    page = tmp_path / "report.html"
    result.report(page, images=torch.cat(images), model=model)
    html = page.read_text()
    assert html.count("data:image/png;base64") >= len(result.words)  # a heatmap per filter's top image

    class Broken(list):  # the same two batches, but the second cannot be read
        def __iter__(self):
            yield self[0]
            raise RuntimeError("the disk went away")

    vocab = Vocabulary.from_words(space[1], space[0])
    kw = dict(layer=layer, vocabulary=vocab, top_images=3, words_per_image=2, num_words=3, progress=False)
    with pytest.raises(RuntimeError, match="the disk went away"):
        explain(model, Broken(images), expl, checkpoint=tmp_path / "ckpt", checkpoint_every=1, **kw)
    resumed = explain(model, images, expl, checkpoint=tmp_path / "ckpt", checkpoint_every=1, **kw)
    assert resumed.words == result.words and resumed.top_images == result.top_images


@pytest.mark.parametrize("name", ["tv-swin", "timm-vit-registers"])
def test_explain_on_the_device_equals_the_cpu(space, name, device):
    """The CUDA variant (skipped without a GPU): the same grids, kernels and words on the device."""
    build, layer, _, _ = MODELS[name]
    expl, on_cpu = _explained(_seeded(build), layer, space, "activation")
    images = [torch.stack([Patches(10, seed=3)[i][0] for i in range(j, j + 5)]) for j in (0, 5)]
    on_device = explain(_seeded(build).to(device), images, expl.to(device), layer=layer, method="activation",
                        vocabulary=Vocabulary.from_words(space[1], space[0]), top_images=3, words_per_image=2,
                        num_words=3, device=device, progress=False)
    assert on_device.top_images == on_cpu.top_images and on_device.words == on_cpu.words
    torch.testing.assert_close(torch.tensor(on_device.thresholds), torch.tensor(on_cpu.thresholds), rtol=1e-4,
                               atol=1e-5)


# ------------------------------------------------------------------------------------------------ the command line


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt fails loudly: the model hub cannot be reached."""
    import socket

    connect = socket.socket.connect

    def refuse(self, *args, **kwargs):
        if self.family == socket.AF_UNIX:  # DataLoader workers hand tensors over on local sockets
            return connect(self, *args, **kwargs)
        raise AssertionError(f"a network connection was attempted: {args}")

    def refuse_create(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse_create)


def test_the_readme_timm_command_works_offline(tmp_path, capsys, no_network):
    """``lavise-fast explain --model timm:vit_tiny_patch16_224 --weights W.pth --images DIR``: the
    architecture from timm, the user's weights, the default explainer of its last block."""
    import numpy as np
    from PIL import Image

    from lavise_fast import cli
    from lavise_fast.result import ExplainResult

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=7)
    torch.save({"state_dict": model.state_dict()}, tmp_path / "W.pth")
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (240, 300, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.jpg")
    out = tmp_path / "result.json"
    code = cli.main(["explain", "--model", "timm:vit_tiny_patch16_224", "--weights", str(tmp_path / "W.pth"),
                     "--images", str(tmp_path / "images"), "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    result = ExplainResult.load(out)
    assert result.settings.layer == "blocks.11" and len(result.filters) == 192 and result.settings.images == 4
    assert result.settings.layout.startswith("tokens: the first 1 dropped") and "a 14x14 grid" in result.settings.layout
    assert "explained 192 filters of blocks.11 on 4 images" in printed


def test_timm_model_errors_are_one_line(tmp_path, capsys, no_network):
    from lavise_fast import cli

    def error(*argv):
        code = cli.main(["explain", *argv, "--world", "2", "--out", str(tmp_path / "r.json"), "--no-progress"])
        assert code == 2
        return capsys.readouterr().err

    assert "'vit_tiny_patch16_225' is not a timm model name (similar: vit_tiny_patch16_224" in error(
        "--model", "timm:vit_tiny_patch16_225", "--weights", "x.pth")
    assert "needs --weights FILE" in error("--model", "timm:vit_tiny_patch16_224")
    torch.save(_seeded(MODELS["tv-vit"][0]).state_dict(), tmp_path / "other.pth")
    assert "does not fit timm:vit_tiny_patch16_224" in error("--model", "timm:vit_tiny_patch16_224", "--weights",
                                                             str(tmp_path / "other.pth"))
