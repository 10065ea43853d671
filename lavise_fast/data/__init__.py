"""Reference sets for training explainers: items ``(image float [3, H, W], masks bool [M, H, W],
labels list[str])``, one mask per object (M may be 0), plus the official LaViSE transforms and the
batching of items.

- :class:`CocoInstances`: COCO instance annotations (pycocotools).
- :class:`VisualGenomeObjects`: Visual Genome object boxes (the official ``vg_objects.json`` or VG's ``objects.json``).
- :class:`ReferenceTransform` (image + masks) and :class:`TargetTransform` (image only, for target
  sets): resize 256, centre crop 224, ImageNet normalisation.
- :class:`ConceptWorld`: the embedded procedural world (shapes, colours, patterns, backgrounds),
  the default reference set; exportable to COCO.
- :func:`collate_reference`: a DataLoader ``collate_fn`` for reference items.
- :class:`ImageFolder` (every image under a folder) and :class:`ImagesOf` (the images of reference
  items): target sets of images only, what :func:`lavise_fast.explain` reads.
- :func:`open_rgb`: how every dataset here decodes a file (16-bit and float grey images scaled to 8
  bits, not clipped; errors name the file).

The word lists shipped with the package (``*.txt`` here) are read by :mod:`lavise_fast.vocabularies`.
"""

from lavise_fast.data._common import open_rgb
from lavise_fast.data.coco import CocoInstances
from lavise_fast.data.collate import collate_reference
from lavise_fast.data.folders import ImageFolder, ImagesOf
from lavise_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ReferenceTransform, TargetTransform
from lavise_fast.data.visual_genome import VisualGenomeObjects
from lavise_fast.data.world import ConceptWorld

__all__ = [
    "CocoInstances",
    "VisualGenomeObjects",
    "ReferenceTransform",
    "TargetTransform",
    "collate_reference",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ConceptWorld",
    "ImageFolder",
    "ImagesOf",
    "open_rgb",
]
