"""Reach any layer of any ``nn.Module`` and read its output, stopping the forward pass there.

A layer is named by its dotted name in ``model.named_modules()`` (``"layer4"``,
``"features.28"``, ``"_blocks.15"``) or given as the module object. Without a name, the
default is the last module (in execution order) whose output is 4-D with more than one spatial
position, so that a global pooling layer is never chosen.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lavise_fast.errors import InputError, InputTypeError

__all__ = ["resolve_layer", "default_layer", "LayerFeatures", "layer_features"]


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """The (dotted name, module) of ``layer`` in ``model``.

    Args:
        model: the network.
        layer: a dotted name from ``model.named_modules()`` or a submodule of ``model``.

    Raises:
        ValueError: ``layer`` is no module of ``model``; the message lists the nearest names.
        TypeError: ``layer`` is neither a string nor an ``nn.Module``.
    """
    names = {name: module for name, module in model.named_modules() if name}
    if isinstance(layer, str):
        if layer in names:
            return layer, names[layer]
        near = difflib.get_close_matches(layer, list(names), n=5, cutoff=0.5)
        hint = f"; nearest: {', '.join(near)}" if near else f"; it has {len(names)} named modules"
        raise InputError(f"layer {layer!r} is not a module of {type(model).__name__}{hint}")
    if isinstance(layer, nn.Module):
        for name, module in names.items():
            if module is layer:
                return name, module
        raise InputError(f"layer {type(layer).__name__} (a module object) is not a submodule of {type(model).__name__}")
    raise InputTypeError(f"layer must be a dotted module name or an nn.Module, got {type(layer).__name__}")


class _Stop(Exception):
    """Raised by the hook once every wanted output is captured, to skip the rest of the forward."""


class LayerFeatures:
    """Captures the outputs of ``layers`` of ``model`` during a forward pass and stops the pass
    right after the last of them has run (``stop_early=True``)::

        with LayerFeatures(model, ["layer3", "layer4"]) as tap:
            feats = tap(images)          # {"layer3": [N, C3, H3, W3], "layer4": [N, C4, H4, W4]}

    Args:
        model: the network to run.
        layers: dotted names or modules (each looked up in ``model``), or a mapping {dotted name: module}
            of layers already resolved (:func:`resolve_layer`), taken as they are; at least one.
        stop_early: stop the forward pass once every wanted layer has run; False runs the whole model.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str | nn.Module] | Mapping[str, nn.Module],
                 stop_early: bool = True) -> None:
        if not layers:
            raise InputError("layers must name at least one layer")
        self.model = model
        self.stop_early = stop_early
        self.layers = dict(layers) if isinstance(layers, Mapping) else dict(resolve_layer(model, layer)
                                                                              for layer in layers)
        self._outputs: dict[str, torch.Tensor] = {}
        self._wanted: set[str] = set(self.layers)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LayerFeatures:
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            if not isinstance(output, torch.Tensor):
                raise InputTypeError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
            self._outputs[name] = output
            if self.stop_early and self._wanted.issubset(self._outputs):
                raise _Stop

        return hook

    def __call__(self, images: torch.Tensor, only: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Runs the model on ``images`` and returns each layer's output (4-D ``[N, C, H, W]``);
        with ``only`` (names among the layers), the pass stops once those have run, and the dict
        holds them (and any other layer that ran before them).

        Args:
            images: the model's input, e.g. [N, 3, H, W].
            only: names among the layers to wait for; None: all of them.
        """
        if not self._handles:
            raise RuntimeError("use LayerFeatures as a context manager: `with LayerFeatures(model, layers) as tap:`")
        wanted = set(self.layers) if only is None else set(only)
        unknown = sorted(wanted - set(self.layers))
        if unknown:
            raise InputError(f"only= names layers this LayerFeatures does not capture: {unknown}")
        self._outputs, self._wanted = {}, wanted
        try:
            self.model(images)
        except _Stop:
            pass
        missing = [name for name in self.layers if name in wanted and name not in self._outputs]
        if missing:
            raise RuntimeError(f"the forward pass of {type(self.model).__name__} never ran layer(s) {missing}")
        for name, out in self._outputs.items():
            if out.dim() != 4:
                raise InputError(
                    f"layer {name!r} outputs a {out.dim()}-D tensor of shape {tuple(out.shape)}; "
                    "filters are explained on 4-D [N, C, H, W] feature maps"
                )
        return self._outputs


@torch.no_grad()
def layer_features(model: nn.Module, layer: str | nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The output [N, C, H, W] of one layer for a batch, without running the layers after it.

    Args:
        model: the network.
        layer: a dotted module name or a submodule of ``model``.
        images: the input batch, e.g. [N, 3, H, W].
    """
    with LayerFeatures(model, [layer]) as tap:
        return next(iter(tap(images).values()))


@torch.no_grad()
def default_layer(model: nn.Module, sample: torch.Tensor) -> str:
    """The dotted name of the last module, in execution order, whose output for ``sample`` is 4-D
    with more than one spatial position (so never a global pooling layer).

    Args:
        model: the network; it runs once, in full, on ``sample``.
        sample: an input batch, e.g. [1, 3, H, W] on the model's device.

    Raises:
        ValueError: no module gives such an output.
    """
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(module: nn.Module, inputs: object, output: object, name: str = name) -> None:
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1:
                order.append(name)

        handles.append(module.register_forward_hook(hook))
    try:
        model(sample)
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise InputError(f"no module of {type(model).__name__} outputs a 4-D feature map with more than one position")
    # The last 4-D output to run; among modules finishing together (a block and its last
    # child), the outermost, which was registered first and finished last.
    return order[-1]


def model_device(model: nn.Module, device: torch.device | str | None = None) -> torch.device:
    """The device to run ``model`` on: ``device`` when given (the model must already be there),
    else the device of its first parameter or buffer (the CPU for a model with neither).

    Args:
        model: the network.
        device: the device asked for; None: the model's.
    """
    tensors = [t for t in (*model.parameters(), *model.buffers())][:1]
    found = tensors[0].device if tensors else torch.device("cpu")
    if device is None:
        return found
    device = torch.device(device)
    if tensors and found.type != device.type:
        raise InputError(f"device={str(device)!r} but the model is on {str(found)!r}: move it first "
                         f"(model.to({str(device)!r}))")
    return device

