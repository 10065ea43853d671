"""How a layer's output is read as a feature map ``[N, C, H, W]``: CNN maps, channels-last maps and tokens.

A filter is a channel of a map on a spatial grid. Three layouts of a layer's output are read as one:

- ``"nchw"``: ``[N, C, H, W]``, as CNN layers give it; taken as it is.
- ``"nhwc"``: ``[N, H, W, C]``, channels last, as Swin stages and blocks give it; ``permute(0, 3, 1, 2)``.
- ``"tokens"``: ``[N, T, D]``, a token sequence (ViT, DeiT, BEiT, Swin's flattened stages): the first
  ``prefix`` tokens (class, distillation and register tokens) are dropped and the ``T - prefix = h * w``
  patch tokens, in row-major order, are put back on their grid: ``[N, D, h, w]`` with
  ``out[n, d, i, j] = x[n, prefix + i * w + j, d]``.

:func:`find_layout` reads the layout from the layer's module, the model and the output's shape;
:func:`set_layout` overrides it for one module (it holds for every function that reads that module).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from lavise_fast.errors import InputError, InputTypeError

__all__ = ["Layout", "find_layout", "set_layout", "layout_override", "as_feature_map"]

_KINDS = ("nchw", "nhwc", "tokens")
_MAX_PREFIX = 16  # class + distillation + register tokens considered when the model does not say
_overrides: weakref.WeakKeyDictionary[nn.Module, Layout] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Layout:
    """How to read one layer's output (module docstring).

    Args:
        kind: ``"nchw"``, ``"nhwc"`` or ``"tokens"``.
        prefix: tokens only: how many leading tokens are not patches (dropped).
        grid: tokens only: the patch grid ``(h, w)``; None: square, ``h = w = sqrt(T - prefix)``.
    """

    kind: str = "nchw"
    prefix: int = 0
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise InputError(f"layout kind must be one of {_KINDS}, got {self.kind!r}")
        if isinstance(self.prefix, bool) or not isinstance(self.prefix, int) or self.prefix < 0:
            raise InputError(f"prefix must be an int >= 0 (the tokens before the patches), got {self.prefix!r}")
        if self.grid is not None and (len(self.grid) != 2 or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in self.grid)):
            raise InputError(f"grid must be two positive ints (h, w), got {self.grid!r}")

    def describe(self) -> str:
        """One line for messages and result settings: what is read and what is dropped."""
        if self.kind != "tokens":
            return self.kind
        grid = "a square grid" if self.grid is None else f"a {self.grid[0]}x{self.grid[1]} grid"
        return f"tokens: the first {self.prefix} dropped (class/distillation/register), the rest on {grid}"


def set_layout(module: nn.Module, kind: str | None = None, *, prefix: int = 0,
               grid: tuple[int, int] | None = None) -> None:
    """Overrides how the output of ``module`` is read, for every function that reads it.

    Args:
        module: the layer (a submodule of the explained model).
        kind: ``"nchw"``, ``"nhwc"`` or ``"tokens"``; None removes the override.
        prefix: tokens: how many leading tokens to drop.
        grid: tokens: the patch grid ``(h, w)`` (default square).
    """
    if not isinstance(module, nn.Module):
        raise InputTypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if kind is None:
        _overrides.pop(module, None)
        return
    _overrides[module] = Layout(kind, prefix, tuple(grid) if grid is not None else None)


def layout_override(module: nn.Module) -> Layout | None:
    """The layout :func:`set_layout` gave ``module``, or None (caches and checkpoints key on it).

    Args:
        module: the layer.
    """
    return _overrides.get(module)


def _channel_count(module: nn.Module) -> int | None:
    """The channels the module's last parametrised submodule produces (a norm's features, a linear's or a
    convolution's outputs), or None when it has none."""
    count = None
    for sub in module.modules():
        if isinstance(sub, nn.LayerNorm) and sub.normalized_shape:
            count = int(sub.normalized_shape[-1])
        elif isinstance(sub, (nn.BatchNorm2d, nn.GroupNorm)):
            count = int(getattr(sub, "num_features", 0) or getattr(sub, "num_channels", 0)) or count
        elif isinstance(sub, nn.Linear):
            count = int(sub.out_features)
        elif isinstance(sub, nn.Conv2d):
            count = int(sub.out_channels)
    return count


def _model_prefix(model: nn.Module | None) -> int | None:
    """The leading non-patch tokens the model says it has (timm's ``num_prefix_tokens``; torchvision's ViT
    has one class token), or None."""
    if model is None:
        return None
    prefix = getattr(model, "num_prefix_tokens", None)
    if isinstance(prefix, int) and not isinstance(prefix, bool):
        return prefix
    if isinstance(getattr(model, "class_token", None), torch.Tensor):  # torchvision's VisionTransformer
        return 1
    return None


def _model_grid(model: nn.Module | None) -> tuple[int, int] | None:
    """The patch grid the model says it has (timm's ``patch_embed.grid_size``), or None."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if isinstance(grid, (tuple, list)) and len(grid) == 2 and all(isinstance(v, int) for v in grid):
        return int(grid[0]), int(grid[1])
    return None


def find_layout(name: str, module: nn.Module, output: torch.Tensor, model: nn.Module | None = None) -> Layout:
    """The layout of ``output``, the output of layer ``name`` (``module``) of ``model``: the override of
    :func:`set_layout`; else 3-D is tokens (the model's prefix and grid where it states them, else the
    fewest leading tokens, at most 16, that leave a square number); 4-D is channels last when its last
    dimension, and not its second, equals the channels the module's last norm/linear/convolution makes.

    Args:
        name: the layer's dotted name (for messages).
        module: the layer.
        output: its output for a batch.
        model: the whole model (its ``num_prefix_tokens``, ``class_token`` or ``patch_embed.grid_size``).

    Raises:
        ValueError: the output cannot be read as a grid (the message names the layer and the shape).
    """
    shape = tuple(output.shape)
    given = _overrides.get(module)
    if given is not None:
        return given
    if output.dim() == 4:
        channels = _channel_count(module)
        if channels is not None and shape[3] == channels and shape[1] != channels:
            return Layout("nhwc")
        return Layout("nchw")
    if output.dim() == 3:
        tokens = shape[1]
        prefix, grid = _model_prefix(model), _model_grid(model)
        if grid is not None and prefix is None and tokens >= grid[0] * grid[1]:
            prefix = tokens - grid[0] * grid[1]
        if prefix is not None and grid is not None and tokens - prefix == grid[0] * grid[1]:
            return Layout("tokens", prefix, grid)
        if prefix is not None and tokens > prefix and math.isqrt(tokens - prefix) ** 2 == tokens - prefix:
            return Layout("tokens", prefix)
        for prefix in range(min(_MAX_PREFIX, tokens - 1) + 1):
            if math.isqrt(tokens - prefix) ** 2 == tokens - prefix:
                return Layout("tokens", prefix)
    raise InputError(
        f"layer {name!r} outputs a {output.dim()}-D tensor of shape {shape}, which is not a feature map: filters "
        "are explained "
        "on [N, C, H, W] maps, [N, H, W, C] channels-last maps or [N, T, D] token sequences with a square grid "
        "of patch tokens; for another grid, say how to read it with lavise_fast.grids.set_layout(module, "
        "'tokens', prefix=..., grid=(h, w))")


def as_feature_map(output: torch.Tensor, layout: Layout, name: str = "layer") -> torch.Tensor:
    """``output`` read as ``[N, C, H, W]`` (module docstring); a view where the layout allows.

    Args:
        output: the layer's output.
        layout: how to read it (:func:`find_layout`).
        name: the layer's name, for messages.
    """
    if layout.kind == "nchw":
        if output.dim() != 4:
            raise InputError(f"layer {name!r} outputs shape {tuple(output.shape)}, not [N, C, H, W]")
        return output
    if layout.kind == "nhwc":
        if output.dim() != 4:
            raise InputError(f"layer {name!r} outputs shape {tuple(output.shape)}, not [N, H, W, C]")
        return output.permute(0, 3, 1, 2)
    if output.dim() != 3:
        raise InputError(f"layer {name!r} outputs shape {tuple(output.shape)}, not tokens [N, T, D]")
    n, tokens, dim = output.shape
    patches = tokens - layout.prefix
    if layout.grid is not None:
        h, w = layout.grid
    else:
        h = w = math.isqrt(max(patches, 0))
    if patches < 1 or h * w != patches:
        raise InputError(f"layer {name!r} outputs {tokens} tokens; with {layout.prefix} prefix tokens the "
                         f"{patches} left do not fill a {h}x{w} grid (set the layout: lavise_fast.grids.set_layout)")
    return output[:, layout.prefix:].transpose(1, 2).reshape(n, dim, h, w)
