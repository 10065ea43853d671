"""Reach any layer of any ``nn.Module`` and read its output as a feature map ``[N, C, H, W]``,
stopping the forward pass there.

A layer is named by its dotted name in ``model.named_modules()`` (``"layer4"``, ``"features.28"``,
``"blocks.11"``) or given as the module object. Its output is read on its grid by
:mod:`lavise_fast.grids`: CNN maps as they are, channels-last maps (Swin, ConvNeXt blocks) permuted,
token sequences (ViT, DeiT, BEiT, Swin) without their class/distillation/register tokens and with
the patch tokens put back on their grid. Without a name, the default layer of a CNN is the last
module (in execution order) whose output is a 4-D map with more than one spatial position, so that
a global pooling layer is never chosen (nor an ``nn.Identity``); of a transformer (a model with token or channels-last
outputs) it is the last block: the last module with parameters, held in an ``nn.Sequential`` or
``nn.ModuleList`` beside another module of its class (a stack of blocks or stages), whose output
reads as such a map.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from lavise_fast.errors import InputError, InputTypeError, LaviseError
from lavise_fast.grids import Layout, as_feature_map, find_layout

__all__ = ["resolve_layer", "default_layer", "LayerFeatures", "layer_features", "run_model", "model_device"]


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
    """Captures the outputs of ``layers`` of ``model`` during a forward pass, each read as a feature
    map (module docstring), and stops the pass right after the last of them has run
    (``stop_early=True``)::

        with LayerFeatures(model, ["layer3", "layer4"]) as tap:
            feats = tap(images)          # {"layer3": [N, C3, H3, W3], "layer4": [N, C4, H4, W4]}
        tap.layouts                      # {"layer3": Layout("nchw"), ...}: how each output was read

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
        self.layouts: dict[str, Layout] = {}  # found on the first output of each layer
        self._wanted: set[str] = set(self.layers)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LayerFeatures:
        for name, module in self.layers.items():
            if isinstance(module, torch.jit.ScriptModule):
                self.__exit__()
                raise InputTypeError(
                    f"layer {name!r} is a TorchScript module (torch.jit.script or torch.jit.load), on which no forward "
                    "hook can be put: pass the Python model, or load a TorchScript file with "
                    "lavise_fast.models.load_torchscript (its top-level stages become layers)")
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
        """Runs the model on ``images`` and returns each layer's output as a feature map ``[N, C, H, W]``
        (contiguous where it had to be rearranged); with ``only`` (names among the layers), the pass
        stops once those have run, and the dict holds them (and any other layer that ran before them).

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
            run_model(self.model, images)
        except _Stop:
            pass
        missing = [name for name in self.layers if name in wanted and name not in self._outputs]
        if missing:
            raise RuntimeError(f"the forward pass of {type(self.model).__name__} never ran layer(s) {missing}")
        maps = {}
        for name, out in self._outputs.items():
            if name not in self.layouts:
                self.layouts[name] = find_layout(name, self.layers[name], out, self.model)
            layout = self.layouts[name]
            maps[name] = as_feature_map(out, layout, name)
            if layout.kind != "nchw":
                maps[name] = maps[name].contiguous()
        return maps


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


def _positions(name: str, module: nn.Module, output: object, model: nn.Module) -> tuple[str, int] | None:
    """(layout kind, grid positions) of an output that reads as a feature map, or None."""
    if not isinstance(output, torch.Tensor) or output.dim() not in (3, 4):
        return None
    try:
        layout = find_layout(name, module, output, model)
    except InputError:
        return None
    if layout.kind == "nchw":
        return "nchw", output.shape[2] * output.shape[3]
    if layout.kind == "nhwc":
        return "nhwc", output.shape[1] * output.shape[2]
    return "tokens", output.shape[1] - layout.prefix


@torch.no_grad()
def default_layer(model: nn.Module, sample: torch.Tensor) -> str:
    """The dotted name of the layer explained when none is named (module docstring): for a CNN the
    last module, in execution order, whose output for ``sample`` is 4-D with more than one spatial
    position (so never a global pooling layer); for a transformer (some output is a token sequence or
    a channels-last map) its last block.

    Args:
        model: the network; it runs once, in full, on ``sample``.
        sample: an input batch, e.g. [1, 3, H, W] on the model's device.

    Raises:
        ValueError: no module gives such an output.
    """
    modules = {name: module for name, module in model.named_modules() if name}
    finished: list[tuple[str, tuple[str, int] | None]] = []  # in the order the modules finish
    handles = []
    if isinstance(model, torch.jit.ScriptModule):
        raise InputTypeError(f"{type(model).__name__} is a TorchScript module, whose layers cannot be hooked: pass "
                             "the Python model, or load the file with lavise_fast.models.load_torchscript")
    for name, module in modules.items():

        def hook(module: nn.Module, inputs: object, output: object, name: str = name) -> None:
            finished.append((name, _positions(name, module, output, model)))

        handles.append(module.register_forward_hook(hook))
    try:
        run_model(model, sample)
    finally:
        for handle in handles:
            handle.remove()
    if any(grid is not None and grid[0] != "nchw" for _, grid in finished):
        def block(name: str, stacked: bool) -> bool:
            """Has parameters and sits in a Sequential/ModuleList (``stacked``: beside one of its class)."""
            parent, module = modules.get(name.rpartition(".")[0], model), modules[name]
            return (isinstance(parent, (nn.Sequential, nn.ModuleList)) and any(True for _ in module.parameters())
                    and (not stacked or sum(type(m) is type(module) for m in parent.children()) > 1))

        maps = [name for name, grid in finished if grid is not None and grid[1] > 1]
        order = [name for name in maps if block(name, True)] or [name for name in maps if block(name, False)]
    else:  # never an nn.Identity (timm's norm_pre): the module before it gives the same map
        order = [name for name, grid in finished if grid is not None and grid[0] == "nchw" and grid[1] > 1
                 and not isinstance(modules[name], nn.Identity)]
    if not order:
        raise InputError(f"no module of {type(model).__name__} outputs a 4-D feature map with more than one position")
    # The last to finish; among modules finishing together (a block and its last child), the
    # outermost, which finished last.
    return order[-1]


def run_model(model: nn.Module, images: torch.Tensor) -> object:
    """``model(images)``, with an error the model itself raises (a wrong channel count, an input size it
    does not take: ``RuntimeError``, ``AssertionError``) turned into one :class:`InputError` naming the
    model and the input's shape; lavise_fast's own errors pass as they are.

    Args:
        model: the network.
        images: its input batch.
    """
    try:
        return model(images)
    except (RuntimeError, AssertionError) as error:
        if isinstance(error, LaviseError):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"the model ({type(model).__name__}) failed on images of shape {tuple(images.shape)}: "
                         f"{first}") from error


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

