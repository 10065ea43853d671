"""The report's pictures: a filter's top images with its activation map as a heatmap, as PNG data URLs.

The region above the filter's threshold is outlined; the model is re-run on the shown images only.
"""

from __future__ import annotations

import base64
import contextlib
import io
import math

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.layers import LayerFeatures, model_device
from lavise_fast.result import ExplainResult

__all__ = ["colourmap", "heatmap_overlay", "display", "png_urls", "pictures_for"]

_BATCH = 32  # images per forward pass when the model re-runs the shown top images
_PAIRS = 256  # (filter, image) pictures drawn at once

# Anchors of the heatmap's colour map (a "jet"-like ramp: dark blue, blue, cyan, yellow, red, dark red).
_COLOURMAP = torch.tensor(
    [[0.0, 0.0, 0.5], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]]
)
_HEAT_ALPHA = (0.2, 0.7)  # opacity of the heatmap where the activation is 0 and where it reaches the scale
_OUTLINE = (1.0, 1.0, 1.0)  # colour of the outline of the thresholded region


# ---------------------------------------------------------------------------------------- pictures


def colourmap(values: torch.Tensor) -> torch.Tensor:
    """values [...] in [0, 1] -> RGB [..., 3] in [0, 1], linear between the anchors of ``_COLOURMAP``.

    Args:
        values: the values to colour, any shape; clipped to [0, 1] (0: dark blue, 1: dark red).
    """
    steps = len(_COLOURMAP) - 1
    x = values.clamp(0.0, 1.0) * steps
    low = x.floor().long().clamp(max=steps - 1)
    frac = (x - low)[..., None]
    return _COLOURMAP[low] * (1 - frac) + _COLOURMAP[low + 1] * frac


def _outline(mask: torch.Tensor) -> torch.Tensor:
    """The boundary of ``mask`` [N, H, W] (bool): the pixels of the mask with a 4- or 8-neighbour
    outside it; beyond the image counts as outside, so a region touching the border is closed."""
    outside = F.pad((~mask).float()[:, None], (1, 1, 1, 1), value=1.0)
    near_outside = F.max_pool2d(outside, kernel_size=3, stride=1)[:, 0] > 0
    return mask & near_outside


def heatmap_overlay(
    image: torch.Tensor, activation: torch.Tensor, threshold: float | torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """Images with activation maps overlaid, as the report draws them.

    Args:
        image: [3, H, W], or [M, 3, H, W] one per map, in [0, 1] (the displayed image: unnormalised, resized).
        activation: [h, w] or [M, h, w], the filter's map(s) on that image at feature resolution; they are
            upsampled bilinearly (``align_corners=False``) to H x W.
        threshold: the filter's threshold t (scalar or [M]): the region ``upsampled > t`` is outlined.
        scale: the activation drawn with full heat (scalar or [M]), e.g. the filter's top activation;
            ``activation / scale`` is clipped to [0, 1] and coloured (dark blue -> red) with an opacity
            rising with it (0.2 to 0.7), so that an inactive region mostly shows the image (``scale <= 0``:
            all inactive).

    Returns:
        [M, 3, H, W] (or [3, H, W] for one map and one image) float in [0, 1], on the CPU.
    """
    single = activation.dim() == 2 and image.dim() == 3
    maps = activation[None] if activation.dim() == 2 else activation
    pictures = image[None] if image.dim() == 3 else image
    if maps.dim() != 3 or pictures.dim() != 4 or pictures.shape[1] != 3 or len(pictures) not in (1, len(maps)):
        raise InputError(f"image must be [3, H, W] or [M, 3, H, W] and activation [h, w] or [M, h, w], got "
                         f"{tuple(image.shape)} and {tuple(activation.shape)}")
    M = maps.shape[0]
    threshold = torch.as_tensor(threshold, dtype=torch.float32).flatten().cpu().expand(M)
    scale = torch.as_tensor(scale, dtype=torch.float32).flatten().cpu().expand(M)
    up = F.interpolate(maps[:, None].float(), size=tuple(pictures.shape[-2:]), mode="bilinear", align_corners=False)
    up = up[:, 0].cpu()
    positive = scale > 0
    value = up / torch.where(positive, scale, torch.ones_like(scale))[:, None, None]
    value = torch.nan_to_num(value * positive[:, None, None], nan=0.0).clamp(0.0, 1.0)
    heat = colourmap(value).permute(0, 3, 1, 2)  # [M, 3, H, W]
    alpha = _HEAT_ALPHA[0] + (_HEAT_ALPHA[1] - _HEAT_ALPHA[0]) * value[:, None]
    out = pictures.float().cpu() * (1 - alpha) + heat * alpha
    edge = _outline(up > threshold[:, None, None])[:, None]
    out = torch.where(edge, torch.tensor(_OUTLINE)[None, :, None, None], out)
    return out[0] if single else out


def png_urls(pictures: torch.Tensor) -> list[str]:
    """[M, 3, H, W] in [0, 1] -> M ``data:image/png;base64,...`` URLs.

    Args:
        pictures: [M, 3, H, W] RGB pictures in [0, 1] (clipped, then rounded to 8 bits), on the CPU.
    """
    arrays = (pictures.clamp(0.0, 1.0) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    urls = []
    for array in arrays:
        buffer = io.BytesIO()
        Image.fromarray(array, "RGB").save(buffer, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return urls


def _image_at(images, index: int) -> torch.Tensor:
    """The image tensor [3, H, W] at position ``index`` of ``images`` (an item or its first element)."""
    try:
        item = images[index]
    except TypeError as error:
        if hasattr(images, "__getitem__"):
            raise
        hint = ": pass its .dataset" if hasattr(images, "dataset") else ""
        raise InputTypeError(f"images must be indexable by image position (a dataset, a list or a tensor of images), "
                        f"got {type(images).__name__}{hint}") from error
    except (IndexError, KeyError) as error:
        size = f" (it holds {len(images)})" if hasattr(images, "__len__") else ""
        raise InputError(f"images has no item {index}{size}: images must be indexable by the result's image "
                         f"indices, i.e. the target set the explain loader read, in its order") from error
    if isinstance(item, (tuple, list)) and len(item):
        item = item[0]
    if not torch.is_tensor(item) or item.dim() != 3 or item.shape[0] != 3 or not item.is_floating_point():
        found = f"{item.dtype} tensor of shape {tuple(item.shape)}" if torch.is_tensor(item) else type(item).__name__
        raise InputTypeError(f"images[{index}] must be a float image tensor [3, H, W] (or a tuple starting with one), "
                        f"got {found}")
    return item


def display(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, thumbnail: int) -> torch.Tensor:
    """Normalised images [N, 3, H, W] -> the displayed pictures [N, 3, h, w] in [0, 1]: longest side
    ``thumbnail``, or the image's own when smaller (the page scales those up).

    Args:
        images: normalised images [N, 3, H, W].
        mean: the normalisation's mean, [3, 1, 1] (broadcast over the images).
        std: the normalisation's std, [3, 1, 1]; ``images * std + mean`` is the RGB in [0, 1].
        thumbnail: the longest side of the displayed pictures in pixels (resized bilinearly, antialiased).
    """
    pictures = (images.detach().float().cpu() * std + mean).clamp(0.0, 1.0)
    H, W = pictures.shape[-2:]
    side = min(thumbnail, max(H, W))
    size = (max(1, round(H * side / max(H, W))), max(1, round(W * side / max(H, W))))
    if size != (H, W):
        pictures = F.interpolate(pictures, size=size, mode="bilinear", align_corners=False, antialias=True)
    return pictures.clamp(0.0, 1.0)


def _groups(images, indices: list[int]) -> list[tuple[list[int], torch.Tensor]]:
    """``images`` at ``indices``, stacked per image shape: [(indices, images [n, 3, H, W])]."""
    by_shape: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = {}
    for index in indices:
        image = _image_at(images, index)
        by_shape.setdefault(tuple(image.shape), []).append((index, image))
    return [([i for i, _ in items], torch.stack([x for _, x in items])) for items in by_shape.values()]


@torch.no_grad()
def pictures_for(result: ExplainResult, images, model, mean, std, max_images: int, thumbnail: int, device,
              progress: bool) -> dict[tuple[int, int], str]:
    """The embedded pictures: {(position of the filter in the result, image index): data URL} for the first
    ``max_images`` top images of every filter; with ``model``, with the filter's heatmap and outline.

    Args:
        result: the explained result (its filters, top images, top activations, thresholds, layer).
        images: the target images, indexable by the result's image indices; each item a float image [3, H, W]
            or a tuple/list starting with one.
        model: the explained model, re-run on the shown images up to ``result.settings.layer``; None: plain
            pictures.
        mean: the images' normalisation mean, 3 floats.
        std: the images' normalisation std, 3 floats.
        max_images: the top images shown per filter.
        thumbnail: the pictures' longest side in pixels (see :func:`display`).
        device: where the model runs (it must already be there); None: the device of its parameters.
        progress: show a tqdm progress bar.
    """
    wanted: dict[int, list[int]] = {}  # image index -> positions of the filters that show it
    for pos, tops in enumerate(result.top_images):
        for image in tops[:max_images]:
            wanted.setdefault(int(image), []).append(pos)
    union = sorted(wanted)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    out: dict[tuple[int, int], str] = {}
    with contextlib.ExitStack() as stack:
        layer = tap = None
        if model is not None:
            layer = result.settings.layer
            if not layer:
                raise InputError("result.settings has no 'layer': the report cannot re-run the model without it")
            device = model_device(model, device)
            model.eval()
            tap = stack.enter_context(LayerFeatures(model, [layer]))
            channels = torch.tensor(result.filters)
            thresholds = torch.tensor(result.thresholds, dtype=torch.float32)
            scales = torch.tensor([max((a for a in acts if math.isfinite(a)), default=0.0)
                                   for acts in result.top_activations], dtype=torch.float32)
        bar = stack.enter_context(tqdm(total=len(union), desc="report images", unit="image", disable=not progress))
        for start in range(0, len(union), _BATCH):
            for indices, batch in _groups(images, union[start : start + _BATCH]):
                shown = display(batch, mean_t, std_t, thumbnail)
                if tap is None:
                    for index, url in zip(indices, png_urls(shown), strict=True):
                        out.update({(pos, index): url for pos in wanted[index]})
                    bar.update(len(indices))
                    continue
                features = tap(batch.to(device))[layer]
                if features.shape[1] <= int(channels.max()):
                    raise InputError(f"layer {layer!r} of the model has {features.shape[1]} filters, but the "
                                     f"result explains filter {int(channels.max())}: is it the explained model?")
                all_rows = torch.tensor([row for row, index in enumerate(indices) for _ in wanted[index]])
                all_positions = torch.tensor([pos for index in indices for pos in wanted[index]])
                for first in range(0, len(all_rows), _PAIRS):  # bounded memory however many filters share
                    rows, positions = all_rows[first : first + _PAIRS], all_positions[first : first + _PAIRS]
                    maps = features[rows.to(features.device), channels[positions].to(features.device)]
                    drawn = heatmap_overlay(shown[rows], maps, thresholds[positions], scales[positions])
                    keys = [(pos, indices[row]) for row, pos in zip(rows.tolist(), positions.tolist(), strict=True)]
                    out.update(zip(keys, png_urls(drawn), strict=True))
                bar.update(len(indices))
    return out


# ---------------------------------------------------------------------------------------- text


