"""ConceptWorld: the embedded, procedural, seeded reference set.

Every item is a scene of a few objects on a textured background. Each object is a shape
(circle, square, star, ...) filled with a colour and a surface pattern (plain, striped, ...);
the background is a concept too (sky, grass, sand, ...). An item is
``(image [3, S, S] float32, masks [M, S, S] bool, labels list[str])`` with one mask per concept
word: an object gives the same visible mask to its colour, its shape and its pattern (no word for
"plain"); the background's word covers every pixel that no object covers. Item ``i`` depends on
``(seed, i)`` only, so items can be made in any order, alone, and in DataLoader workers.
"""

from __future__ import annotations

import functools
import math
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lavise_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lavise_fast.errors import InputError, InputTypeError
from lavise_fast.files import atomic_write, atomic_write_json
from lavise_fast.validate import int_at_least

_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.array(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)

__all__ = ["BACKGROUNDS", "COLOURS", "DEFAULT_BACKGROUNDS", "DEFAULT_COLOURS", "DEFAULT_PATTERNS", "DEFAULT_SHAPES",
           "FAMILIES", "PATTERNS", "SHAPES", "ConceptWorld", "Scene", "SceneObject"]

#: Colour words and their RGB in [0, 1]. Shades ("dark red", "light blue") sit next to their base colour
#: in pixels (darker or paler) and in the word space (a sentence encoder embeds "dark red" near "red").
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.08, 0.08),
    "dark red": (0.48, 0.03, 0.05),
    "green": (0.10, 0.68, 0.18),
    "dark green": (0.03, 0.34, 0.09),
    "light green": (0.60, 0.93, 0.48),
    "blue": (0.10, 0.25, 0.92),
    "dark blue": (0.04, 0.09, 0.45),
    "light blue": (0.52, 0.75, 1.00),
    "yellow": (0.98, 0.88, 0.08),
    "orange": (1.00, 0.52, 0.02),
    "dark orange": (0.72, 0.32, 0.00),
    "purple": (0.52, 0.12, 0.70),
    "light purple": (0.80, 0.62, 0.96),
    "white": (0.97, 0.97, 0.97),
    "grey": (0.50, 0.50, 0.52),
    "black": (0.05, 0.05, 0.05),
    "pink": (1.00, 0.55, 0.76),
    "brown": (0.48, 0.28, 0.10),
}
SHAPES: tuple[str, ...] = (
    "circle", "oval", "ring", "square", "rectangle", "hexagon", "octagon", "triangle", "star", "cross",
    "diamond", "heart", "crescent",
)  # fmt: skip
#: "plain" draws the colour alone and emits no word.
PATTERNS: tuple[str, ...] = ("plain", "striped", "wavy", "dotted", "spotted", "checkered", "zigzag")
BACKGROUNDS: tuple[str, ...] = (
    "sky", "clouds", "grass", "lawn", "sand", "desert", "water", "ocean", "snow", "ice", "brick", "wall", "road",
    "gravel", "wood",
)  # fmt: skip
#: Concept families: words related both in pixels (a shade, a stretched shape, a variant of a texture)
#: and in the word space, the family's base concept first. :meth:`ConceptWorld.split_words` holds
#: out variants whose base concept stays seen, so that an explainer can reach the unseen ones
#: through the seen ones.
FAMILIES: dict[str, tuple[str, ...]] = {
    "red": ("red", "dark red"),
    "green": ("green", "dark green", "light green"),
    "blue": ("blue", "dark blue", "light blue"),
    "grey": ("grey", "white", "black"),
    "warm": ("orange", "yellow", "brown"),
    "purple": ("purple", "pink"),
    "round": ("circle", "oval", "ring"),
    "four-sided": ("square", "rectangle"),
    "polygon": ("hexagon", "octagon"),
    "stripes": ("striped", "wavy"),
    "dots": ("dotted", "spotted"),
    "sky": ("sky", "clouds"),
    "grass": ("grass", "lawn"),
    "sand": ("sand", "desert"),
    "water": ("water", "ocean"),
    "snow": ("snow", "ice"),
    "masonry": ("brick", "wall"),
    "road": ("road", "gravel"),
}
#: The words of a default world: the members of the families of colours, shapes, patterns and
#: backgrounds (every word has a sibling, so that any of them can be held out). The other words of
#: the tables above (star, checkered, wood, ...) are there for worlds that ask for them.
DEFAULT_COLOURS: tuple[str, ...] = (
    "red", "dark red", "green", "dark green", "light green", "blue", "dark blue", "light blue", "white", "grey",
    "black", "yellow", "orange", "brown", "purple", "pink",
)  # fmt: skip
DEFAULT_SHAPES: tuple[str, ...] = ("circle", "oval", "square", "rectangle", "hexagon", "octagon")
DEFAULT_PATTERNS: tuple[str, ...] = ("plain", "striped", "wavy", "dotted", "spotted")
DEFAULT_BACKGROUNDS: tuple[str, ...] = ("sky", "clouds", "grass", "lawn", "sand", "desert", "water", "ocean", "snow",
                                        "ice")

_MIN_IMAGE_SIZE = 16
_MAX_OBJECTS = 12
# Shapes that would turn into another shape (square <-> diamond) or look odd when turned freely.
_MAX_TILT = {"square": math.pi / 12, "rectangle": math.pi / 12, "diamond": math.pi / 12, "cross": math.pi / 12,
             "heart": math.pi / 9}


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its words and geometry (centre and radius as fractions of the image side,
    ``angle`` in radians)."""

    colour: str
    shape: str
    pattern: str
    centre: tuple[float, float]  # (x, y)
    radius: float
    angle: float

    @property
    def words(self) -> list[str]:
        """The concept words this object emits, in label order."""
        return [self.colour, self.shape] + ([] if self.pattern == "plain" else [self.pattern])


@dataclass(frozen=True)
class Scene:
    """The layout of one item, bottom object first (cheap: nothing is rendered)."""

    background: str
    objects: tuple[SceneObject, ...]


def _words(argument: str, given, supported: Sequence[str]) -> tuple[str, ...]:
    if isinstance(given, str) or not isinstance(given, Sequence | Mapping):
        raise InputTypeError(f"{argument} must be a sequence of words, got {type(given).__name__}")
    words = tuple(given)
    if not words:
        raise InputError(f"{argument} must name at least one word, got an empty {type(given).__name__}")
    for w in words:
        if not isinstance(w, str):
            raise InputTypeError(f"{argument} must hold strings, got {w!r} ({type(w).__name__})")
    unknown = [w for w in words if w not in supported]
    if unknown:
        raise InputError(f"{argument} holds unsupported words {unknown}; expected words from {list(supported)}")
    if len(set(words)) != len(words):
        raise InputError(f"{argument} holds repeated words: {list(words)}")
    return words


def _colour_table(given) -> dict[str, tuple[float, float, float]]:
    if isinstance(given, Mapping):
        table = {}
        for name, rgb in given.items():
            if not isinstance(name, str) or not name:
                raise InputTypeError(f"colours must map non-empty words to RGB, got the key {name!r}")
            values = tuple(float(c) for c in rgb)
            if len(values) != 3 or not all(0.0 <= c <= 1.0 for c in values):
                raise InputError(f"colours[{name!r}] must be 3 floats in [0, 1], got {rgb!r}")
            table[name] = values
        if not table:
            raise InputError("colours must name at least one colour, got an empty mapping")
        return table
    return {w: COLOURS[w] for w in _words("colours", given, tuple(COLOURS))}


class ConceptWorld(torch.utils.data.Dataset):
    """A procedural reference set of ``size`` scenes, ``image_size`` pixels square.

    Item ``i``: ``(image [3, S, S] float32, masks [M, S, S] bool, labels list[str])``, labels[m] the
    concept word of masks[m]. The background's mask comes first, then each object's words (colour,
    shape, pattern unless plain) bottom object first; an object's words share its visible mask (the
    parts that objects drawn above it hide are removed); masks are never empty and the background's
    mask is the complement of the union of the objects' masks. ``image`` is ImageNet-normalised when
    ``normalize`` is True, else RGB in [0, 1]; the RGB values are multiples of 1/255 (before any
    normalisation), so a PNG export (:meth:`to_coco`) holds them exactly.

    Args:
        size: number of items, at least 1.
        image_size: S, the image side in pixels, at least 16.
        seed: non-negative int; item i is drawn from ``numpy.random.default_rng([seed, i])`` alone.
        colours: colour words from :data:`COLOURS`, or a mapping word -> RGB in [0, 1] (default
            :data:`DEFAULT_COLOURS`).
        shapes: shape words from :data:`SHAPES` (default :data:`DEFAULT_SHAPES`).
        patterns: pattern words from :data:`PATTERNS` (default :data:`DEFAULT_PATTERNS`).
        backgrounds: background words from :data:`BACKGROUNDS` (default :data:`DEFAULT_BACKGROUNDS`). The four
            defaults are the members of the :data:`FAMILIES`, 36 words; all words must be distinct.
        objects_per_image: ``n`` or ``(low, high)``: each scene has between low and high objects
            (uniform, inclusive; at most 12).
        weights: relative sampling weight of any colour, shape, pattern or background word
            (default 1 each), e.g. ``{"red": 5.0}`` makes red five times as likely as each other colour:
            use it to build skewed subsets for bias analysis.
        normalize: ImageNet mean/std normalisation of the image.
        attribute_regions: give a patterned object's attributes their own regions: the pattern
            word covers the pattern's marks (stripes, dots, squares), the colour word the rest of
            the object, the shape word all of it (a plain object's colour and shape share one mask).
            False: the three words share the object's mask.
    """

    def __init__(
        self,
        size: int = 2000,
        image_size: int = 224,
        seed: int = 0,
        *,
        colours: Sequence[str] | Mapping[str, Sequence[float]] = DEFAULT_COLOURS,
        shapes: Sequence[str] = DEFAULT_SHAPES,
        patterns: Sequence[str] = DEFAULT_PATTERNS,
        backgrounds: Sequence[str] = DEFAULT_BACKGROUNDS,
        objects_per_image: int | tuple[int, int] = (1, 3),
        weights: Mapping[str, float] | None = None,
        normalize: bool = True,
        attribute_regions: bool = False,
    ) -> None:
        self.size = int_at_least("size", size, 1)
        self.image_size = int_at_least("image_size", image_size, _MIN_IMAGE_SIZE)
        self.seed = int_at_least("seed", seed, 0)
        self._rgb = _colour_table(colours)
        self.colours = tuple(self._rgb)
        self.shapes = _words("shapes", shapes, SHAPES)
        self.patterns = _words("patterns", patterns, PATTERNS)
        self.backgrounds = _words("backgrounds", backgrounds, BACKGROUNDS)
        self.objects_per_image = _object_range(objects_per_image)
        self.normalize = bool(normalize)
        self.attribute_regions = bool(attribute_regions)
        lists = {
            "colours": self.colours,
            "shapes": self.shapes,
            "patterns": self.patterns,
            "backgrounds": self.backgrounds,
        }
        seen: dict[str, str] = {}
        for argument, words in lists.items():
            for w in words:
                if w in seen:
                    raise InputError(f"the word {w!r} is in both {seen[w]} and {argument}; words must be unique")
                seen[w] = argument
        self.weights = _weights(weights, lists)
        cumulative = {name: np.cumsum([self.weights[w] for w in words]) for name, words in lists.items()}
        self._cdf = {name: c / c[-1] for name, c in cumulative.items()}
        self._grid: tuple[np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ metadata

    @property
    def concepts(self) -> list[str]:
        """Every word an item can emit: colours, shapes, patterns (not "plain"), backgrounds."""
        return [*self.colours, *self.shapes, *(p for p in self.patterns if p != "plain"), *self.backgrounds]

    @property
    def families(self) -> dict[str, list[str]]:
        """The :data:`FAMILIES` with at least two of this world's words, restricted to them."""
        present = set(self.concepts)
        kept = {name: [w for w in words if w in present] for name, words in FAMILIES.items()}
        return {name: words for name, words in kept.items() if len(words) >= 2}

    def split_words(self, anno_rate: float = 0.5, seed: int = 0) -> tuple[list[str], list[str]]:
        """(seen, unseen) words for training an explainer with ``anno_rate`` of the words seen, such
        that zero-shot is possible: every unseen word is a variant in a family (:attr:`families`)
        whose base concept (its first word) stays seen, and words without a family are seen. Within
        that rule, a seeded draw among the variants holds out words until ``anno_rate`` of the words
        are seen or every variant is held out. Both lists are sorted.

        Args:
            anno_rate: the share of :attr:`concepts` to keep seen, in (0, 1] (at least one word stays seen).
            seed: non-negative int; the draw uses ``numpy.random.default_rng([seed, 0x5EE1])``.
        """
        if isinstance(anno_rate, bool) or not isinstance(anno_rate, int | float) or not 0.0 < anno_rate <= 1.0:
            raise InputError(f"anno_rate must be a number in (0, 1], got {anno_rate!r}")
        seed = int_at_least("seed", seed, 0)
        rng = np.random.default_rng([seed, 0x5EE1])
        words = self.concepts
        candidates = [w for family in self.families.values() for w in family[1:]]  # every base concept stays seen
        order = rng.permutation(len(candidates))
        hold = max(0, len(words) - max(1, round(anno_rate * len(words))))
        unseen = {candidates[i] for i in order[:hold]}
        return sorted(w for w in words if w not in unseen), sorted(unseen)

    def colour_rgb(self, word: str) -> tuple[float, float, float]:
        """The RGB in [0, 1] that the colour ``word`` is drawn with (before patterns and shading).

        Args:
            word: one of this world's colour words.
        """
        return self._rgb[word]

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        low, high = self.objects_per_image
        return (
            f"ConceptWorld(size={self.size}, image_size={self.image_size}, seed={self.seed}, "
            f"concepts={len(self.concepts)}, objects_per_image=({low}, {high}))"
        )

    def _index(self, index) -> int:
        i = operator.index(index)
        if i < 0:
            i += self.size
        if not 0 <= i < self.size:
            raise IndexError(f"index {index} is out of range for a ConceptWorld of size {self.size}")
        return i

    def scene(self, index: int) -> Scene:
        """The layout of item ``index`` (background, objects bottom first), without rendering it.

        Its words are the item's labels except where an object covers no pixel centre at all (only
        possible at tiny image sizes or when a scene is too crowded to place every object apart).

        Args:
            index: the item's index (negative counts from the end).
        """
        return self._layout(self._rng(self._index(index)))

    # ------------------------------------------------------------------ items

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        image, masks, labels = self._render(index)
        if self.normalize:
            image = (image - _MEAN) / _STD
        return torch.from_numpy(image), torch.from_numpy(masks), labels

    def render(self, index: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Item ``index`` with its RGB image in [0, 1] (multiples of 1/255), never normalised.

        Args:
            index: the item's index (negative counts from the end).
        """
        image, masks, labels = self._render(index)
        return torch.from_numpy(image), torch.from_numpy(masks), labels

    def _render(self, index: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        # NumPy, not torch: single-threaded by construction, so that small items never pay for waking
        # a thread pool (which costs milliseconds per op on a busy machine) and workers stay cheap.
        rng = self._rng(self._index(index))
        scene = self._layout(rng)
        s = self.image_size
        x, y = self._coordinates()
        image = np.empty((3, s, s), dtype=np.float32)
        image[...] = _BACKGROUND_PAINTERS[scene.background](rng, x, y)
        shade = 1.0 + 0.04 * np.clip(_smooth_noise(rng, s, 5, 5), -1.5, 1.5)  # soft light on the objects
        # Each object is drawn inside its bounding box only: a few percent of the pixels each.
        drawn = []
        for obj in scene.objects:
            rows, cols = box = _box(obj, s)
            u, v = _local(x[:, cols], y[rows, :], obj)
            inside = _SHAPE_MASKS[obj.shape](u, v)
            second = _PATTERN_MASKS[obj.pattern](rng, u, v)
            primary = np.array(self._rgb[obj.colour], dtype=np.float32).reshape(3, 1, 1)
            fill = primary if second is None else np.where(second, _pattern_colour(primary), primary)
            image[:, rows, cols] = np.where(inside, fill * shade[box], image[:, rows, cols])
            drawn.append((box, inside, second))
        image = np.floor(np.clip(image, 0.0, 1.0) * 255.0 + 0.5) / np.float32(255.0)  # 8-bit values

        visible, labels = [], []
        covered = np.zeros((s, s), dtype=bool)
        for obj, (box, inside, second) in zip(reversed(scene.objects), reversed(drawn), strict=True):
            seen = inside & ~covered[box]
            covered[box] |= inside
            regions = [(w, seen) for w in obj.words]
            if self.attribute_regions and second is not None:  # colour: the rest; pattern: its marks
                marks = seen & second
                regions = [(obj.colour, seen & ~second), (obj.shape, seen), (obj.pattern, marks)]
            regions = [(w, region) for w, region in regions if region.any()]
            visible[:0] = [(box, region) for _, region in regions]
            labels[:0] = [w for w, _ in regions]
        masks = np.zeros((len(labels) + 1, s, s), dtype=bool)
        masks[0] = ~covered
        for mask, (box, seen) in zip(masks[1:], visible, strict=True):
            mask[box] = seen
        if masks[0].any():
            labels.insert(0, scene.background)
        else:
            masks = masks[1:]
        return image.astype(np.float32, copy=False), masks, labels

    def _rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, i])

    def _coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates in (0, 1): x [1, S] and y [S, 1], broadcasting to [S, S]."""
        if self._grid is None:
            t = ((np.arange(self.image_size) + 0.5) / self.image_size).astype(np.float32)
            self._grid = (t.reshape(1, -1), t.reshape(-1, 1))
        return self._grid

    def _draw(self, rng: np.random.Generator, name: str, words: Sequence[str]) -> str:
        return words[min(int(np.searchsorted(self._cdf[name], rng.random(), side="right")), len(words) - 1)]

    def _layout(self, rng: np.random.Generator) -> Scene:
        low, high = self.objects_per_image
        count = int(rng.integers(low, high + 1))
        background = self._draw(rng, "backgrounds", self.backgrounds)
        scale = min(1.3, math.sqrt(2.0 / max(count, 1)))
        objects: list[SceneObject] = []
        for _ in range(count):
            colour = self._draw(rng, "colours", self.colours)
            shape = self._draw(rng, "shapes", self.shapes)
            pattern = self._draw(rng, "patterns", self.patterns)
            radius = float(rng.uniform(0.12, 0.22)) * scale  # 1 object: 0.16-0.29, 3: 0.10-0.18
            # Place apart from the others (no object can hide another), or where the last try fell.
            for _try in range(16):
                cx, cy = (float(c) for c in rng.uniform(radius, 1.0 - radius, size=2))
                if all(math.hypot(cx - o.centre[0], cy - o.centre[1]) >= 0.6 * (radius + o.radius) for o in objects):
                    break
            tilt = _MAX_TILT.get(shape, math.pi)
            angle = float(rng.uniform(-tilt, tilt))
            objects.append(SceneObject(colour, shape, pattern, (cx, cy), radius, angle))
        return Scene(background, tuple(objects))

    # ------------------------------------------------------------------ export

    def to_coco(
        self,
        directory: str | os.PathLike,
        *,
        indices: Sequence[int] | None = None,
        image_format: str = "png",
        quality: int = 95,
        progress: bool = True,
    ) -> tuple[Path, Path]:
        """Writes the items as a COCO instances set: ``directory/images/{i:06d}.png`` (the RGB image,
        never normalised) and ``directory/annotations.json`` (written atomically). Image ``i`` has id
        ``i + 1``; each (object, word) mask is one annotation (RLE segmentation, area, bbox,
        iscrowd 0) in label order, with category = the word (ids 1.. in :attr:`concepts` order).
        PNG is lossless, so the pixels read back exactly; ``image_format="jpeg"`` saves space and uses
        ``quality``. Returns ``(images directory, annotations file)``.

        Args:
            directory: the folder to write into (created if missing).
            indices: the items to write (negative counts from the end); None: all of them, in order.
            image_format: "png" (lossless), "jpeg" or "jpg".
            quality: the JPEG quality, 1..100 (ignored for PNG).
            progress: show a tqdm progress bar.
        """
        from PIL import Image
        from pycocotools import mask as mask_utils
        from tqdm import tqdm

        formats = {"png": ".png", "jpeg": ".jpg", "jpg": ".jpg"}
        if image_format not in formats:
            raise InputError(f"image_format must be one of {sorted(formats)}, got {image_format!r}")
        quality = int_at_least("quality", quality, 1)
        if quality > 100:
            raise InputError(f"quality must be an int in [1, 100], got {quality}")
        order = range(self.size) if indices is None else [self._index(i) for i in indices]
        root = Path(directory)
        images_dir = root / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        category = {w: k + 1 for k, w in enumerate(self.concepts)}
        images, annotations = [], []
        for i in tqdm(order, desc="writing ConceptWorld as COCO", disable=not progress):
            rgb, masks, labels = self._render(i)
            name = f"{i:06d}{formats[image_format]}"
            pixels = np.ascontiguousarray(np.floor(rgb * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0))
            options = {"quality": quality} if formats[image_format] == ".jpg" else {"compress_level": 1}
            _atomic_image(Image.fromarray(pixels), images_dir / name, "JPEG" if ".jpg" in name else "PNG", options)
            images.append({"id": i + 1, "file_name": name, "width": self.image_size, "height": self.image_size})
            for mask, word in zip(masks, labels, strict=True):
                rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": category[word],
                        "segmentation": {"size": [int(n) for n in rle["size"]], "counts": rle["counts"].decode()},
                        "area": float(mask_utils.area(rle)),
                        "bbox": [float(b) for b in mask_utils.toBbox(rle)],
                        "iscrowd": 0,
                    }
                )
        document = {
            "info": {
                "description": f"lavise_fast {self!r}",
                "seed": self.seed,
                "image_size": self.image_size,
            },
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": [{"id": k, "name": w, "supercategory": _kind(self, w)} for w, k in category.items()],
        }
        target = atomic_write_json(root / "annotations.json", document)
        return images_dir, target


# ---------------------------------------------------------------------- argument checks


def _object_range(value) -> tuple[int, int]:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        low = high = int(value)
    elif isinstance(value, Sequence) and len(value) == 2 and all(isinstance(v, int | np.integer) for v in value):
        low, high = (int(v) for v in value)
    else:
        raise InputTypeError(f"objects_per_image must be an int or a (low, high) pair of ints, got {value!r}")
    if not 0 <= low <= high <= _MAX_OBJECTS:
        raise InputError(f"objects_per_image must satisfy 0 <= low <= high <= {_MAX_OBJECTS}, got ({low}, {high})")
    return low, high


def _weights(weights, lists: Mapping[str, Sequence[str]]) -> dict[str, float]:
    table = {w: 1.0 for words in lists.values() for w in words}
    if weights is None:
        return table
    if not isinstance(weights, Mapping):
        raise InputTypeError(f"weights must be a mapping word -> float, got {type(weights).__name__}")
    unknown = [w for w in weights if w not in table]
    if unknown:
        raise InputError(
            f"weights has keys {unknown} that are not words of this world; expected keys from {list(table)}"
        )
    for w, given in weights.items():
        value = float(given) if isinstance(given, int | float | np.integer | np.floating) else math.nan
        if isinstance(given, bool) or not math.isfinite(value) or value < 0:
            raise InputError(f"weights[{w!r}] must be a finite number >= 0, got {given!r}")
        table[w] = value
    for argument, words in lists.items():
        if sum(table[w] for w in words) <= 0:
            raise InputError(f"weights give every word of {argument} weight 0; at least one must be positive")
    return table


def _kind(world: ConceptWorld, word: str) -> str:
    for kind, words in (("colour", world.colours), ("shape", world.shapes), ("pattern", world.patterns)):
        if word in words:
            return kind
    return "background"


def _atomic_image(image, path: Path, fmt: str, options: dict) -> None:
    atomic_write(path, lambda f: image.save(f, format=fmt, **options))


# ---------------------------------------------------------------------- rendering
# Images are float32 arrays [3, S, S] (RGB in [0, 1]); x is [1, S] and y is [S, 1] (pixel centres in
# (0, 1)), so that expressions in both broadcast to [S, S].


def _smooth_noise(rng: np.random.Generator, size: int, rows: int, cols: int) -> np.ndarray:
    """Value noise [size, size]: a (rows + 1) x (cols + 1) lattice of standard normal values spanning
    the image, interpolated separably with smoothstep weights."""
    grid = rng.standard_normal((rows + 1, cols + 1), dtype=np.float32)
    left, right, fx = _lattice(cols + 1, size)
    top, bottom, fy = _lattice(rows + 1, size)
    across = grid[:, left] + (grid[:, right] - grid[:, left]) * fx  # [rows + 1, size]
    upper = across[top]
    return upper + (across[bottom] - upper) * fy.reshape(-1, 1)


@functools.lru_cache(maxsize=64)
def _lattice(points: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``size`` pixels along a side spanned by ``points`` lattice nodes: the nodes before
    and after it and the smoothstep weight of the one after."""
    position = np.linspace(0.0, points - 1.0, size)
    before = np.minimum(np.floor(position), max(points - 2, 0)).astype(np.intp)
    t = np.clip(position - before, 0.0, 1.0)
    after = np.minimum(before + 1, points - 1)
    return before, after, (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _grain(rng: np.random.Generator, size: int) -> np.ndarray:
    """Per-pixel uniform noise in [-0.5, 0.5) of shape [size, size]."""
    return rng.random((size, size), dtype=np.float32) - 0.5


def _rgb(values: Sequence[float]) -> np.ndarray:
    return np.array(values, dtype=np.float32).reshape(3, 1, 1)


def _mix(a: np.ndarray, b: np.ndarray, t) -> np.ndarray:
    return a + (b - a) * t


def _sky(rng, x, y):
    s = x.shape[-1]
    image = _mix(_rgb((0.16, 0.40, 0.86)), _rgb((0.62, 0.80, 0.98)), y * float(rng.uniform(0.8, 1.2)))
    clouds = _smooth_noise(rng, s, 3, 5) + 0.5 * _smooth_noise(rng, s, 7, 11)
    cover = np.clip((clouds - float(rng.uniform(0.4, 1.2))) * 1.5, 0.0, 0.9)
    return _mix(image, _rgb((0.97, 0.97, 0.99)), cover) + 0.01 * _grain(rng, s)


def _grass(rng, x, y):
    s = x.shape[-1]
    blades = _smooth_noise(rng, s, max(2, s // 28), max(4, s // 3))  # tall thin streaks
    patches = _smooth_noise(rng, s, 3, 3)
    image = _mix(_rgb((0.16, 0.48, 0.12)), _rgb((0.42, 0.62, 0.16)), np.clip(0.5 + 0.25 * patches, 0.0, 1.0))
    return image * (1.0 + 0.22 * blades + 0.25 * _grain(rng, s))


def _sand(rng, x, y):
    s = x.shape[-1]
    ripples = np.sin(2 * math.pi * (y * float(rng.uniform(5, 9)) + 0.25 * _smooth_noise(rng, s, 2, 3)))
    speckle = _grain(rng, s)
    image = _rgb((0.87, 0.76, 0.54)) * (1.0 + 0.05 * ripples + 0.16 * speckle)
    return np.where(speckle > 0.47, image * 0.78, image)


def _water(rng, x, y):
    s = x.shape[-1]
    phase = float(rng.uniform(0, 2 * math.pi))
    wobble = 0.04 * np.sin(2 * math.pi * x * float(rng.uniform(2, 4)) + phase) + 0.05 * _smooth_noise(rng, s, 3, 4)
    waves = np.sin(2 * math.pi * (y + wobble) * float(rng.uniform(10, 16)))
    image = _mix(_rgb((0.10, 0.45, 0.68)), _rgb((0.03, 0.22, 0.48)), y) * (1.0 + 0.12 * waves)
    return _mix(image, _rgb((0.75, 0.92, 1.0)), np.clip((waves - 0.8) * 2.5, 0.0, 0.5))


def _snow(rng, x, y):
    s = x.shape[-1]
    shadow = np.clip(0.5 * _smooth_noise(rng, s, 3, 3), 0.0, 1.0)
    image = _rgb((0.94, 0.95, 0.98)) - shadow * _rgb((0.16, 0.12, 0.04)) + 0.03 * _grain(rng, s)
    return np.where(_grain(rng, s) > 0.496, np.ones_like(image), image)


def _brick(rng, x, y):
    s = x.shape[-1]
    rows = int(rng.integers(6, 10))
    cols = rows / 2.5
    row = np.floor(y * rows)
    shifted = x * cols + 0.5 * (row % 2)
    col = np.floor(shifted)
    tone = rng.standard_normal((rows, int(cols) + 2), dtype=np.float32)
    jitter = tone[np.clip(row.astype(np.intp), 0, rows - 1), np.clip(col.astype(np.intp), 0, tone.shape[1] - 1)]
    brick = _rgb((0.62, 0.25, 0.17)) * (1.0 + 0.09 * jitter + 0.14 * _grain(rng, s))
    mortar = (y * rows - row < 0.12) | (shifted - col < 0.05)
    return np.where(mortar, _rgb((0.80, 0.78, 0.73)) + 0.05 * _grain(rng, s), brick)


def _wood(rng, x, y):
    s = x.shape[-1]
    planks = int(rng.integers(3, 6))
    index = np.floor(y * planks)
    tone = rng.standard_normal(planks, dtype=np.float32)[np.clip(index.astype(np.intp), 0, planks - 1)]
    grain = np.sin(2 * math.pi * (y * planks * 5 + 0.5 * _smooth_noise(rng, s, 6, 2)))
    image = _rgb((0.60, 0.38, 0.18)) * (1.0 + 0.08 * tone + 0.12 * grain + 0.06 * _grain(rng, s))
    return np.where(y * planks - index < 0.035, image * 0.45, image)


def _road(rng, x, y):
    s = x.shape[-1]
    speckle = _grain(rng, s)
    image = _rgb((0.33, 0.33, 0.35)) * (1.0 + 0.05 * _smooth_noise(rng, s, 4, 4) + 0.3 * speckle)
    return np.where(speckle > 0.485, image * 1.5, image)


def _clouds(rng, x, y):
    """An overcast sky: the sky's blue showing through a thick, lumpy grey-white cover."""
    s = x.shape[-1]
    image = _mix(_rgb((0.22, 0.45, 0.85)), _rgb((0.60, 0.78, 0.96)), y)
    lumps = _smooth_noise(rng, s, 4, 6) + 0.6 * _smooth_noise(rng, s, 9, 13)
    cover = np.clip(0.75 + 0.35 * lumps, 0.0, 1.0)
    grey = _mix(_rgb((0.98, 0.98, 0.99)), _rgb((0.66, 0.68, 0.72)), np.clip(0.5 - 0.4 * lumps, 0.0, 1.0))
    return _mix(image, grey, cover) + 0.01 * _grain(rng, s)


def _lawn(rng, x, y):
    """A mowed lawn: grass of even length in broad light and dark mowing stripes."""
    s = x.shape[-1]
    a = float(rng.uniform(0, math.pi))
    bands = np.mod((x * math.cos(a) + y * math.sin(a)) * float(rng.uniform(3, 5)), 1.0) < 0.5
    image = np.where(bands, _rgb((0.30, 0.66, 0.20)), _rgb((0.20, 0.52, 0.14)))
    return image * (1.0 + 0.08 * _smooth_noise(rng, s, max(2, s // 16), max(2, s // 16)) + 0.12 * _grain(rng, s))


def _desert(rng, x, y):
    """Desert dunes: orange sand in large smooth swells with shaded lee sides, no speckle."""
    s = x.shape[-1]
    swell = np.sin(2 * math.pi * (y * float(rng.uniform(1.5, 3.0)) + 0.35 * _smooth_noise(rng, s, 2, 2)))
    image = _rgb((0.88, 0.62, 0.34)) * (1.0 + 0.16 * swell)
    return image * (1.0 + 0.03 * _grain(rng, s))


def _ocean(rng, x, y):
    """The open ocean: deep navy water in tall, broken swells with white caps."""
    s = x.shape[-1]
    wobble = 0.08 * _smooth_noise(rng, s, 3, 3)
    waves = np.sin(2 * math.pi * (y + wobble) * float(rng.uniform(5, 8)) + float(rng.uniform(0, 2 * math.pi)))
    image = _mix(_rgb((0.04, 0.20, 0.45)), _rgb((0.01, 0.09, 0.28)), y) * (1.0 + 0.18 * waves)
    caps = np.clip((waves + 0.3 * _smooth_noise(rng, s, 6, 8) - 0.85) * 4.0, 0.0, 0.85)
    return _mix(image, _rgb((0.92, 0.96, 1.0)), caps)


def _ice(rng, x, y):
    """Ice: pale glassy cyan-white with dark crack lines between smooth plates."""
    s = x.shape[-1]
    cells, edge = _voronoi(rng, x, y, int(rng.integers(5, 9)))
    tone = rng.uniform(-1, 1, size=cells.max() + 1).astype(np.float32)[cells]
    image = _rgb((0.78, 0.90, 0.96)) * (1.0 + 0.05 * tone + 0.04 * _smooth_noise(rng, s, 3, 3))
    return np.where(edge < 0.012, _rgb((0.45, 0.58, 0.66)), image)


def _wall(rng, x, y):
    """A stone wall: irregular grey stones of different tones set in light mortar."""
    s = x.shape[-1]
    cells, edge = _voronoi(rng, x, y, int(rng.integers(10, 16)))
    tone = rng.standard_normal(cells.max() + 1).astype(np.float32)[cells]
    stone = _rgb((0.55, 0.52, 0.48)) * (1.0 + 0.12 * tone + 0.12 * _grain(rng, s))
    return np.where(edge < 0.02, _rgb((0.82, 0.80, 0.74)) + 0.04 * _grain(rng, s), stone)


def _gravel(rng, x, y):
    """Gravel: many small pebbles of grey and brown tones, each shaded, with dark gaps."""
    s = x.shape[-1]
    cells, edge = _voronoi(rng, x, y, int(rng.integers(60, 90)))
    n = cells.max() + 1
    tone = rng.uniform(0, 1, size=n).astype(np.float32)[cells]
    pebble = _mix(_rgb((0.50, 0.48, 0.45)), _rgb((0.58, 0.46, 0.34)), tone) * (1.0 + 0.1 * _grain(rng, s))
    return np.where(edge < 0.008, pebble * 0.45, pebble)


def _voronoi(rng, x, y, points: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells of ``points`` random sites: (index of the nearest site [S, S], distance to the cell's
    edge, as the gap between the nearest and second-nearest site's distance [S, S])."""
    sites = rng.uniform(0, 1, size=(points, 2)).astype(np.float32)
    d = np.sqrt((x[None] - sites[:, 0, None, None]) ** 2 + (y[None] - sites[:, 1, None, None]) ** 2)
    two = np.partition(d, 1, axis=0)[:2]
    return d.argmin(0), two[1] - two[0]


_BACKGROUND_PAINTERS: dict[str, Callable] = {
    "sky": _sky,
    "clouds": _clouds,
    "lawn": _lawn,
    "desert": _desert,
    "ocean": _ocean,
    "ice": _ice,
    "wall": _wall,
    "gravel": _gravel,
    "grass": _grass,
    "sand": _sand,
    "water": _water,
    "snow": _snow,
    "brick": _brick,
    "wood": _wood,
    "road": _road,
}


def _box(obj: SceneObject, size: int) -> tuple[slice, slice]:
    """The (rows, columns) slices of the pixels within 1.3 radii of the object's centre."""
    half = 1.3 * obj.radius
    (x, y) = obj.centre
    rows = slice(max(0, math.floor((y - half) * size)), min(size, math.ceil((y + half) * size)))
    cols = slice(max(0, math.floor((x - half) * size)), min(size, math.ceil((x + half) * size)))
    return rows, cols


def _local(x: np.ndarray, y: np.ndarray, obj: SceneObject) -> tuple[np.ndarray, np.ndarray]:
    """Object coordinates: origin at the centre, unit = the radius, turned by -angle; v points down."""
    c, s = math.cos(obj.angle), math.sin(obj.angle)
    dx = (x - obj.centre[0]) / obj.radius
    dy = (y - obj.centre[1]) / obj.radius
    return dx * c + dy * s, dy * c - dx * s


def _regular_polygon(u, v, sides: int, apothem: float, start: float) -> np.ndarray:
    inside = None
    for k in range(sides):
        a = start + 2 * math.pi * k / sides
        edge = u * math.cos(a) + v * math.sin(a) <= apothem
        inside = edge if inside is None else inside & edge
    return inside


def _star(u, v, points: int = 5, inner: float = 0.45) -> np.ndarray:
    sector = 2 * math.pi / points
    phi = np.arctan2(u, -v)  # 0 = a point straight up
    folded = np.abs(np.mod(phi + sector / 2, sector) - sector / 2)
    rho = np.sqrt(u * u + v * v)
    qx, qy = rho * np.cos(folded), rho * np.sin(folded)
    bx, by = inner * math.cos(sector / 2), inner * math.sin(sector / 2)
    return (bx - 1.0) * qy - by * (qx - 1.0) >= 0  # left of the edge from the point to the notch


def _heart(u, v) -> np.ndarray:
    a, b = u * 1.15, 0.15 - v * 1.15
    r = a * a + b * b - 1.0
    return r * r * r - a * a * b * b * b <= 0


_SHAPE_MASKS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "oval": lambda u, v: u * u + (v / 0.58) ** 2 <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.82,
    "rectangle": lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 0.55),
    "octagon": lambda u, v: _regular_polygon(u, v, 8, 0.9, math.pi / 8),
    "triangle": lambda u, v: _regular_polygon(u, v + 0.15, 3, 0.55, math.pi / 2),
    "star": _star,
    "ring": lambda u, v: ((u * u + v * v) <= 1.0) & ((u * u + v * v) >= 0.36),
    "cross": lambda u, v: ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95)),
    "diamond": lambda u, v: np.abs(u) + np.abs(v) <= 1.05,
    "hexagon": lambda u, v: _regular_polygon(u, v, 6, 0.88, 0.0),
    "heart": _heart,
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + (v + 0.1) ** 2 >= 0.62),
}


def _pattern_colour(rgb: np.ndarray) -> np.ndarray:
    """The pattern's second colour: a darker shade of a light colour, a lighter one of a dark colour."""
    light = float(0.299 * rgb[0, 0, 0] + 0.587 * rgb[1, 0, 0] + 0.114 * rgb[2, 0, 0]) > 0.5
    return rgb * 0.45 if light else rgb + (1.0 - rgb) * 0.55


def _striped(rng, u, v):
    a = float(rng.uniform(0, math.pi))
    w = u * math.cos(a) + v * math.sin(a)
    return np.mod(w, 0.45) < 0.225


def _dotted(rng, u, v):
    du = np.mod(u, 0.5) - 0.25
    dv = np.mod(v, 0.5) - 0.25
    return du * du + dv * dv <= 0.14**2


def _checkered(rng, u, v):
    return np.mod(np.floor(u / 0.5) + np.floor(v / 0.5), 2) == 1


def _wavy(rng, u, v):
    """Stripes that wave: the striped pattern with a sinusoidal bend along the stripes."""
    a = float(rng.uniform(0, math.pi))
    w = u * math.cos(a) + v * math.sin(a)
    along = -u * math.sin(a) + v * math.cos(a)
    return np.mod(w + 0.12 * np.sin(2 * math.pi * along / 0.7), 0.45) < 0.225


def _spotted(rng, u, v):
    """Spots: a few blotches of random size and place (dotted is a regular grid of small dots)."""
    spots = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for _ in range(int(rng.integers(4, 8))):
        cu, cv = rng.uniform(-0.8, 0.8, size=2)
        r = float(rng.uniform(0.14, 0.26))
        spots |= (u - cu) ** 2 + ((v - cv) * float(rng.uniform(0.7, 1.3))) ** 2 <= r * r
    return spots


def _zigzag(rng, u, v):
    tooth = np.abs(np.mod(u, 0.4) / 0.4 - 0.5) * 0.3
    return np.mod(v + tooth, 0.45) < 0.225


_PATTERN_MASKS: dict[str, Callable] = {
    "plain": lambda rng, u, v: None,
    "striped": _striped,
    "wavy": _wavy,
    "dotted": _dotted,
    "spotted": _spotted,
    "checkered": _checkered,
    "zigzag": _zigzag,
}
