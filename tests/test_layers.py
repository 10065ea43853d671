"""Layer access by dotted name or module object, early stop, and the default layer."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lavise_fast.layers import LayerFeatures, default_layer, layer_features, resolve_layer


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def vgg_like() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ).eval()


def test_dotted_name_equals_the_plain_forward(resnet):
    x = torch.randn(2, 3, 64, 64)
    got = layer_features(resnet, "layer3", x)
    with torch.no_grad():
        h = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        want = resnet.layer3(resnet.layer2(resnet.layer1(h)))
    torch.testing.assert_close(got, want)
    assert got.shape == (2, 256, 4, 4)


def test_module_object_and_nested_names(resnet):
    x = torch.randn(1, 3, 64, 64)
    by_object = layer_features(resnet, resnet.layer2[1].conv2, x)
    by_name = layer_features(resnet, "layer2.1.conv2", x)
    torch.testing.assert_close(by_object, by_name)
    assert resolve_layer(resnet, resnet.layer4)[0] == "layer4"
    model = vgg_like()
    assert layer_features(model, "3", torch.randn(2, 3, 10, 10)).shape == (2, 16, 5, 5)


def test_forward_stops_after_the_layer(resnet):
    ran = []
    handle = resnet.layer4.register_forward_hook(lambda *args: ran.append("layer4"))
    try:
        layer_features(resnet, "layer2", torch.randn(1, 3, 64, 64))
    finally:
        handle.remove()
    assert ran == []


def test_several_layers_in_one_pass(resnet):
    x = torch.randn(2, 3, 64, 64)
    with LayerFeatures(resnet, ["layer4", "layer2"]) as tap:
        out = tap(x)
    assert set(out) == {"layer2", "layer4"}
    torch.testing.assert_close(out["layer4"], layer_features(resnet, "layer4", x))


def test_only_stops_at_the_named_layers(resnet):
    """``tap(x, only=[...])`` runs the model only as far as those layers (the ``image`` method of a
    several-layer sweep runs each masked image to its own layer), with the same features."""
    x = torch.randn(2, 3, 64, 64)
    ran = []
    handle = resnet.layer3.register_forward_hook(lambda *args: ran.append("layer3"))
    try:
        with LayerFeatures(resnet, ["layer4", "layer2"]) as tap:
            out = tap(x, only=["layer2"])
            assert ran == [] and set(out) == {"layer2"}
            assert set(tap(x)) == {"layer2", "layer4"} and ran == ["layer3"]  # without only=: every layer
            with pytest.raises(ValueError, match=r"only= names layers .*\['layer3'\]"):
                tap(x, only=["layer3"])
    finally:
        handle.remove()
    torch.testing.assert_close(out["layer2"], layer_features(resnet, "layer2", x))


def test_default_layer_is_the_last_spatial_map(resnet):
    assert default_layer(resnet, torch.randn(1, 3, 64, 64)) == "layer4"  # avgpool's 1x1 output is skipped
    assert default_layer(vgg_like(), torch.randn(1, 3, 10, 10)) == "4"  # the ReLU after the last conv


def test_unknown_layer_lists_the_nearest_names(resnet):
    with pytest.raises(ValueError, match=r"'layer5'.*nearest: .*layer4"):
        resolve_layer(resnet, "layer5")
    with pytest.raises(ValueError, match="not a submodule"):
        resolve_layer(resnet, nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="layer must be"):
        resolve_layer(resnet, 4)


def test_a_layer_that_is_not_4d_is_refused(resnet):
    with pytest.raises(ValueError, match=r"'fc' outputs a 2-D tensor"):
        layer_features(resnet, "fc", torch.randn(1, 3, 64, 64))


def test_a_model_without_spatial_maps_has_no_default():
    with pytest.raises(ValueError, match="no module"):
        default_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.randn(1, 3, 2, 2))


def test_model_device():
    from lavise_fast.layers import model_device

    assert model_device(torch.nn.Conv2d(3, 4, 1)) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")  # no parameter, no buffer
    assert model_device(torch.nn.ReLU(), "cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match="move it first"):
        model_device(torch.nn.Conv2d(3, 4, 1), "cuda")
