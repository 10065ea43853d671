"""ConceptWorld: determinism, masks and labels, colours, skewed subsets, COCO export round trip."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from lavise_fast.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lavise_fast.data.world import (
    BACKGROUNDS,
    COLOURS,
    DEFAULT_BACKGROUNDS,
    DEFAULT_COLOURS,
    DEFAULT_PATTERNS,
    DEFAULT_SHAPES,
    FAMILIES,
    PATTERNS,
    SHAPES,
    ConceptWorld,
)


def _unnormalise(image: torch.Tensor) -> torch.Tensor:
    return image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


def _assert_same_item(a, b) -> None:
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1], b[1])
    assert a[2] == b[2]


def test_item_format():
    world = ConceptWorld(size=7, image_size=40, seed=1)
    assert len(world) == 7
    image, masks, labels = world[3]
    assert image.dtype == torch.float32 and image.shape == (3, 40, 40)
    assert masks.dtype == torch.bool and masks.shape == (len(labels), 40, 40)
    assert all(isinstance(w, str) for w in labels) and set(labels) <= set(world.concepts)
    _assert_same_item(world[-4], world[3])
    with pytest.raises(IndexError, match="out of range"):
        world[7]


def test_default_concepts():
    world = ConceptWorld(size=1)
    assert world.concepts == [*DEFAULT_COLOURS, *DEFAULT_SHAPES, *(p for p in DEFAULT_PATTERNS if p != "plain"),
                              *DEFAULT_BACKGROUNDS]
    assert "plain" not in world.concepts and len(set(world.concepts)) == len(world.concepts) == 36
    # Every default word has a sibling in a family, so any of them can be held out.
    assert all(len([f for f in world.families.values() if w in f]) == 1 for w in world.concepts)
    everything = ConceptWorld(size=1, colours=COLOURS, shapes=SHAPES, patterns=PATTERNS, backgrounds=BACKGROUNDS)
    assert len(everything.concepts) == len(COLOURS) + len(SHAPES) + len(PATTERNS) - 1 + len(BACKGROUNDS)
    assert all(w in everything.concepts for words in FAMILIES.values() for w in words)


@pytest.mark.parametrize(("anno_rate", "seed"), [(0.5, 0), (0.5, 3), (0.3, 1), (0.9, 2), (1.0, 0)])
def test_split_words_holds_out_variants_whose_base_concept_is_seen(anno_rate, seed):
    world = ConceptWorld(size=1, shapes=(*DEFAULT_SHAPES, "star", "heart"))  # two words without a family
    seen, unseen = world.split_words(anno_rate, seed)
    assert sorted(seen + unseen) == sorted(world.concepts) and not set(seen) & set(unseen)
    assert seen == sorted(seen) and unseen == sorted(unseen)
    assert {"star", "heart"} <= set(seen)
    families = world.families
    for word in unseen:
        family = next(f for f in families.values() if word in f)
        assert family[0] in seen and word != family[0], f"{word} is unseen and so is its family's base: {family}"
    most = len(world.concepts) - len(families) - 2  # every family keeps its base, the two lone words stay seen
    assert len(unseen) == min(most, len(world.concepts) - round(anno_rate * len(world.concepts)))
    assert world.split_words(anno_rate, seed) == (seen, unseen)
    if anno_rate == 0.5:
        assert world.split_words(anno_rate, seed + 1) != (seen, unseen)
    with pytest.raises(ValueError, match=r"anno_rate must be a number in \(0, 1\]"):
        world.split_words(0.0)


def test_attribute_regions_give_colour_pattern_and_shape_their_own_masks():
    shared = ConceptWorld(size=20, image_size=64, seed=4, patterns=("striped", "dotted"))
    own = ConceptWorld(size=20, image_size=64, seed=4, patterns=("striped", "dotted"), attribute_regions=True)
    checked = 0
    for i in range(len(own)):
        a, b = shared[i], own[i]
        assert torch.equal(a[0], b[0])  # the same pixels
        scene = own.scene(i)
        masks = dict(zip(b[2][1:], b[1][1:], strict=True)) if len(scene.objects) == 1 else None
        if masks is None or len(masks) != 3:
            continue
        obj = scene.objects[0]
        colour, shape, pattern = masks[obj.colour], masks[obj.shape], masks[obj.pattern]
        assert not (colour & pattern).any() and torch.equal(colour | pattern, shape)
        assert 0 < pattern.sum() < shape.sum() and 0 < colour.sum() < shape.sum()
        rgb = _unnormalise(b[0])  # the pattern's marks are drawn in the second colour, the rest in the first
        first = torch.tensor(own.colour_rgb(obj.colour))[:, None]
        assert (rgb[:, colour] - first).abs().mean() < (rgb[:, pattern] - first).abs().mean()
        checked += 1
    assert checked >= 3


def test_deterministic_and_order_free():
    world = ConceptWorld(size=12, image_size=48, seed=5)
    alone = ConceptWorld(size=12, image_size=48, seed=5)[9]
    for i in range(9):
        world[i]
    _assert_same_item(world[9], alone)
    _assert_same_item(pickle.loads(pickle.dumps(world))[9], alone)  # as in a DataLoader worker
    # The item depends on (seed, i) only, not on the dataset's size.
    _assert_same_item(ConceptWorld(size=100, image_size=48, seed=5)[9], alone)
    other = ConceptWorld(size=12, image_size=48, seed=6)[9]
    assert not torch.equal(other[0], alone[0])
    assert not torch.equal(world[8][0], alone[0])


def test_masks_and_labels_are_consistent():
    world = ConceptWorld(size=40, image_size=64, seed=2)
    for i in range(len(world)):
        image, masks, labels = world[i]
        scene = world.scene(i)
        # Objects are placed apart, so every drawn object is visible: the labels are the scene's words.
        assert labels == [scene.background] + [w for obj in scene.objects for w in obj.words]
        assert masks.flatten(1).any(1).all(), "a mask is empty"
        assert masks.any(0).all(), "the masks do not cover the image"
        background, rest = masks[0], masks[1:]
        assert not (background & rest).any(), "the background overlaps an object"
        start, objects = 1, []
        for obj in scene.objects:
            group = masks[start : start + len(obj.words)]
            assert (group == group[0]).all(), f"the words {obj.words} of one object have different masks"
            objects.append(group[0])
            start += len(obj.words)
        if objects:
            assert torch.stack(objects).sum(0).max() <= 1, "two objects' visible masks overlap"


def test_occlusion_removes_the_hidden_part():
    # Many objects per scene: later objects cover parts of earlier ones; masks stay disjoint and exact.
    world = ConceptWorld(size=6, image_size=48, seed=0, objects_per_image=(8, 8), patterns=["plain"])
    for i in range(len(world)):
        _, masks, labels = world[i]
        objects = masks[1::2]  # background, then (colour, shape) per visible object
        assert torch.equal(masks[1::2], masks[2::2])
        assert objects.sum(0).max() <= 1 and torch.equal(objects.any(0), ~masks[0])
        assert labels[0] in BACKGROUNDS


def test_colour_masks_have_their_colour():
    world = ConceptWorld(size=30, image_size=64, seed=3, patterns=["plain"])
    table = torch.tensor(list(COLOURS.values()))
    checked = 0
    for i in range(len(world)):
        image, masks, labels = world[i]
        rgb = _unnormalise(image)
        for mask, word in zip(masks, labels, strict=True):
            if word not in COLOURS:
                continue
            mean = rgb[:, mask].mean(1)
            expected = torch.tensor(world.colour_rgb(word))
            assert (mean - expected).abs().max() < 0.08, (word, mean, expected)
            assert list(COLOURS)[int((table - mean).norm(dim=1).argmin())] == word
            checked += 1
    assert checked >= 30


def test_unnormalised_images_are_bytes():
    world = ConceptWorld(size=3, image_size=32, seed=4, normalize=False)
    image, _, _ = world[1]
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert torch.equal(image, torch.round(image * 255) / 255)
    normalised = ConceptWorld(size=3, image_size=32, seed=4)[1][0]
    torch.testing.assert_close(_unnormalise(normalised), image)


def test_weights_skew_the_colours():
    def red_share(world: ConceptWorld) -> float:
        counts = Counter(w for i in range(len(world)) for w in world[i][2] if w in COLOURS)
        return counts["red"] / sum(counts.values())

    plain = ConceptWorld(size=300, image_size=32, seed=0)
    skewed = ConceptWorld(size=300, image_size=32, seed=0, weights={"red": 5.0})
    assert 0.03 < red_share(plain) < 0.10  # 1 / 16
    assert 0.18 < red_share(skewed) < 0.34  # 5 / 20
    without = ConceptWorld(size=50, image_size=32, seed=0, weights={"red": 0, "circle": 0, "sky": 0})
    scenes = [without.scene(i) for i in range(len(without))]
    drawn = {s.background for s in scenes} | {w for s in scenes for obj in s.objects for w in obj.words}
    assert not {"red", "circle", "sky"} & drawn


def test_concept_lists_and_object_counts():
    world = ConceptWorld(
        size=20,
        image_size=32,
        colours={"teal": (0.0, 0.5, 0.5), "red": (1.0, 0.0, 0.0)},
        shapes=["star"],
        patterns=["plain", "dotted"],
        backgrounds=["grass", "sand"],
        objects_per_image=2,
    )
    assert world.concepts == ["teal", "red", "star", "dotted", "grass", "sand"]
    for i in range(len(world)):
        scene = world.scene(i)
        assert len(scene.objects) == 2 and scene.background in ("grass", "sand")
        assert set(world[i][2]) <= set(world.concepts)
    empty = ConceptWorld(size=2, image_size=16, objects_per_image=0)
    _, masks, labels = empty[0]
    assert len(labels) == 1 and masks.all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"size": 0}, ValueError, "size must be at least 1, got 0"),
        ({"size": 2.5}, TypeError, "size must be an int"),
        ({"image_size": 8}, ValueError, "image_size must be at least 16, got 8"),
        ({"seed": -1}, ValueError, "seed must be at least 0"),
        ({"colours": []}, ValueError, "colours must name at least one word"),
        ({"colours": {}}, ValueError, "colours must name at least one colour"),
        ({"colours": {"teal": (0, 2, 0)}}, ValueError, r"colours\['teal'\] must be 3 floats in \[0, 1\]"),
        ({"shapes": []}, ValueError, "shapes must name at least one word"),
        ({"shapes": "circle"}, TypeError, "shapes must be a sequence of words"),
        ({"shapes": ["circle", "blob"]}, ValueError, r"shapes holds unsupported words \['blob'\]"),
        ({"patterns": ["dotted", "dotted"]}, ValueError, "patterns holds repeated words"),
        ({"backgrounds": ["space"]}, ValueError, r"backgrounds holds unsupported words \['space'\]"),
        ({"colours": {"sky": (0, 0, 1)}}, ValueError, "'sky' is in both colours and backgrounds"),
        ({"weights": {"mauve": 2.0}}, ValueError, r"weights has keys \['mauve'\]"),
        ({"weights": {"red": -1.0}}, ValueError, r"weights\['red'\] must be a finite number >= 0, got -1.0"),
        ({"weights": dict.fromkeys(DEFAULT_BACKGROUNDS, 0)}, ValueError, "every word of backgrounds weight 0"),
        ({"objects_per_image": (3, 1)}, ValueError, r"0 <= low <= high <= 12, got \(3, 1\)"),
        ({"objects_per_image": (1, 13)}, ValueError, r"got \(1, 13\)"),
        ({"objects_per_image": -1}, ValueError, r"got \(-1, -1\)"),
        ({"objects_per_image": (1, 2, 3)}, TypeError, "objects_per_image must be an int or a"),
    ],
)  # fmt: skip
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ConceptWorld(**kwargs)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools on NumPy 2
def test_to_coco_round_trip(tmp_path):
    from pycocotools.coco import COCO

    from lavise_fast.data.coco import CocoInstances
    from lavise_fast.data.transforms import ReferenceTransform

    world = ConceptWorld(size=5, image_size=48, seed=7)
    images_dir, annotation_file = world.to_coco(tmp_path / "out", progress=False)
    assert annotation_file == tmp_path / "out" / "annotations.json" and images_dir == tmp_path / "out" / "images"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["annotations.json", "images"]
    assert sorted(p.name for p in images_dir.iterdir()) == [f"{i:06d}.png" for i in range(5)]

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotation_file))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert sorted(names.values()) == sorted(world.concepts)
    for i in range(len(world)):
        rgb, masks, labels = world.render(i)
        info = coco.loadImgs(i + 1)[0]
        assert (info["width"], info["height"]) == (48, 48)
        pixels = np.asarray(Image.open(images_dir / info["file_name"]).convert("RGB"))
        assert np.array_equal(pixels, (rgb * 255).round().byte().permute(1, 2, 0).numpy())
        anns = coco.loadAnns(coco.getAnnIds(imgIds=i + 1))
        assert [names[a["category_id"]] for a in anns] == labels
        decoded = torch.from_numpy(np.stack([coco.annToMask(a) for a in anns])).bool()
        assert torch.equal(decoded, masks)
        assert [a["area"] for a in anns] == [float(m.sum()) for m in masks]
        assert all(a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str) for a in anns)

    # Through the package's own COCO reader: raw pixels, and normalised at full resolution.
    raw = CocoInstances(images_dir, annotation_file, transform=None)
    normalised = CocoInstances(images_dir, annotation_file, transform=ReferenceTransform(resize=None, crop=None))
    assert len(raw) == len(world)
    for i in range(len(world)):
        _assert_same_item(raw[i], world.render(i))
        image, masks, labels = normalised[i]
        expected = world[i]
        torch.testing.assert_close(image, expected[0], rtol=0, atol=1e-6)
        assert torch.equal(masks, expected[1]) and labels == expected[2]


def test_to_coco_subset_jpeg_and_rewrite(tmp_path):
    world = ConceptWorld(size=10, image_size=32, seed=8)
    images_dir, annotation_file = world.to_coco(tmp_path, indices=[4, 2], image_format="jpeg", quality=90,
                                                progress=False)  # fmt: skip
    data = json.loads(annotation_file.read_text())
    assert [(im["id"], im["file_name"]) for im in data["images"]] == [(5, "000004.jpg"), (3, "000002.jpg")]
    assert len(data["annotations"]) == len(world[4][2]) + len(world[2][2])
    world.to_coco(tmp_path, indices=[1], progress=False)  # overwrites the annotation file atomically
    assert [im["id"] for im in json.loads(annotation_file.read_text())["images"]] == [2]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")], "temporary files left behind"
    with pytest.raises(ValueError, match="image_format must be one of"):
        world.to_coco(tmp_path, image_format="gif")
    with pytest.raises(IndexError, match="out of range"):
        world.to_coco(tmp_path, indices=[10])
