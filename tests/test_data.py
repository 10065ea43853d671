"""Reference-data loaders on small files written here in exactly the real formats: COCO instances
JSON (polygons, compressed and uncompressed RLE, crowd, boxes), Visual Genome objects JSON (the
official LaViSE layout and VG's own), the LaViSE transforms and the batching of items."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from lavise_fast.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CocoInstances,
    ReferenceTransform,
    TargetTransform,
    VisualGenomeObjects,
    collate_reference,
)


def _rng() -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(0, 2**31, ()).item()))  # seeded per test by conftest


def _random_image(height: int, width: int) -> np.ndarray:
    return _rng().integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(array: np.ndarray, path) -> None:
    Image.fromarray(array).save(path, quality=95) if str(path).endswith(".jpg") else Image.fromarray(array).save(path)


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE, written independently of pycocotools: run lengths of the column-major
    flattening, starting with a run of zeros."""
    flat = mask.astype(bool).flatten(order="F")
    counts, current, run = [], False, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return counts


def _inside_polygon(height: int, width: int, polygon: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """(inside, near_edge) for pixel centres at integer coordinates (pycocotools' convention): even-odd
    point in polygon, and whether the pixel lies within 1 pixel of an edge (where rasterisers may differ)."""
    pts = np.asarray(polygon, dtype=float).reshape(-1, 2)
    ys, xs = np.mgrid[0:height, 0:width].astype(float)
    inside = np.zeros((height, width), dtype=bool)
    near = np.zeros((height, width), dtype=bool)
    for (x0, y0), (x1, y1) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        crosses = (y0 > ys) != (y1 > ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (xs < x_cross)
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        near |= np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy)) <= 1.0
    return inside, near


# ----------------------------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("size", [(187, 301), (333, 150), (256, 256), (90, 120)])
def test_target_transform_matches_torchvision(size):
    T = pytest.importorskip("torchvision.transforms")
    image = Image.fromarray(_random_image(*size))
    official = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    ours = TargetTransform()(image)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, official(image), rtol=0, atol=1e-6)
    assert ours.std() > 0.5  # real content, not a constant


@pytest.mark.parametrize("size", [(50, 70), (301, 99)])
def test_target_transform_options_match_torchvision(size):
    T = pytest.importorskip("torchvision.transforms")
    image = Image.fromarray(_random_image(*size))
    # crop larger than the image: zero padding, placed as torchvision places it
    torch.testing.assert_close(
        TargetTransform(resize=None, crop=100, normalize=False)(image),
        T.Compose([T.CenterCrop(100), T.ToTensor()])(image), rtol=0, atol=0,
    )
    torch.testing.assert_close(
        TargetTransform(resize=77, crop=None, normalize=False)(image),
        T.Compose([T.Resize(77), T.ToTensor()])(image), rtol=0, atol=0,
    )
    # any PIL mode comes out as RGB
    assert TargetTransform()(image.convert("L")).shape == (3, 224, 224)


def test_target_transform_tensor_input_close_to_pil():
    array = _random_image(120, 170)
    pil = TargetTransform(normalize=False)(Image.fromarray(array))
    as_uint8 = TargetTransform(normalize=False)(torch.from_numpy(array).permute(2, 0, 1))
    as_float = TargetTransform(normalize=False)(torch.from_numpy(array).permute(2, 0, 1).float() / 255)
    torch.testing.assert_close(as_uint8, pil, rtol=0, atol=3 / 255)
    torch.testing.assert_close(as_float, as_uint8, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"image must be a tensor \[3, H, W\], got shape \(1, 5, 5\)"):
        TargetTransform()(torch.zeros(1, 5, 5))
    with pytest.raises(TypeError, match="PIL image or a torch tensor"):
        TargetTransform()(array)
    with pytest.raises(ValueError, match="crop must be a positive int"):
        TargetTransform(crop=0)


@pytest.mark.parametrize("size", [(187, 301), (300, 97), (224, 224)])
def test_reference_masks_equal_official_pil_nearest(size):
    """The masks go through exactly the official ``mask_transforms`` (PIL NEAREST to 256, crop 224)."""
    height, width = size
    masks = torch.from_numpy(_rng().random((3, height, width)) > 0.5)
    image, out = ReferenceTransform()(Image.fromarray(_random_image(height, width)), masks)
    assert image.shape == (3, 224, 224) and out.shape == (3, 224, 224) and out.dtype == torch.bool
    new_h, new_w = (int(256 * height / width), 256) if width <= height else (256, int(256 * width / height))
    top, left = int(round((new_h - 224) / 2.0)), int(round((new_w - 224) / 2.0))
    for m in range(3):
        pil = Image.fromarray(masks[m].numpy().astype(np.uint8) * 255).resize((new_w, new_h), Image.NEAREST)
        expected = np.array(pil.crop((left, top, left + 224, top + 224))) > 0
        np.testing.assert_array_equal(out[m].numpy(), expected)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_reference_transform_keeps_a_square_aligned_with_its_mask(as_tensor):
    rng = _rng()
    height, width = 180, 290
    array = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)  # dark noise
    y, x = int(rng.integers(20, 100)), int(rng.integers(40, 180))
    h, w = int(rng.integers(25, 60)), int(rng.integers(25, 60))
    array[y : y + h, x : x + w] = (250, 30, 30)  # a red square
    mask = np.zeros((1, height, width), dtype=bool)
    mask[0, y : y + h, x : x + w] = True
    image = torch.from_numpy(array).permute(2, 0, 1) if as_tensor else Image.fromarray(array)
    out, masks = ReferenceTransform()(image, torch.from_numpy(mask))
    red = out[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]  # back to 0..1
    bright = (red > 0.6).numpy()
    rows_b, cols_b = np.nonzero(bright)
    rows_m, cols_m = np.nonzero(masks[0].numpy())
    assert len(rows_m) > 400
    for a, b in ((rows_b, rows_m), (cols_b, cols_m)):  # same box, up to one pixel of interpolation blur
        assert abs(a.min() - b.min()) <= 1 and abs(a.max() - b.max()) <= 1
    assert (bright == masks[0].numpy()).mean() > 0.98


def test_reference_transform_empty_masks_and_errors():
    image = Image.fromarray(_random_image(40, 60))
    out, masks = ReferenceTransform(resize=32, crop=30)(image, torch.zeros(0, 40, 60, dtype=torch.bool))
    assert out.shape == (3, 30, 30) and masks.shape == (0, 30, 30) and masks.dtype == torch.bool
    with pytest.raises(ValueError, match=r"masks must have shape \[M, 40, 60\] to match the image, got \(2, 60, 40\)"):
        ReferenceTransform()(image, torch.zeros(2, 60, 40, dtype=torch.bool))
    assert "resize=256, crop=224" in repr(ReferenceTransform())


# ----------------------------------------------------------------------------------------------- collate


def _item(m: int, size: int = 8, mask_size: int = 8) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    return torch.randn(3, size, size), torch.rand(m, mask_size, mask_size) > 0.5, [f"w{m}_{i}" for i in range(m)]


def test_collate_reference_shapes_and_rows():
    items = [_item(2), _item(0), _item(3), _item(1)]
    images, masks, rows, labels = collate_reference(items)
    assert images.shape == (4, 3, 8, 8) and masks.shape == (6, 8, 8) and masks.dtype == torch.bool
    assert rows.dtype == torch.int64 and rows.tolist() == [0, 0, 2, 2, 2, 3]
    assert labels == ["w2_0", "w2_1", "w3_0", "w3_1", "w3_2", "w1_0"]
    torch.testing.assert_close(images, torch.stack([item[0] for item in items]))
    torch.testing.assert_close(masks, torch.cat([item[1] for item in items]))
    # a batch with no object at all
    images, masks, rows, labels = collate_reference([_item(0), _item(0)])
    assert images.shape == (2, 3, 8, 8) and masks.shape == (0, 8, 8) and rows.shape == (0,) and labels == []


def test_collate_reference_errors_name_the_item():
    with pytest.raises(ValueError, match="at least one item"):
        collate_reference([])
    with pytest.raises(TypeError, match="reference items must be .* item 1 is a tuple of length 2"):
        collate_reference([_item(1), _item(1)[:2]])
    image, masks, _ = _item(2)
    with pytest.raises(ValueError, match=r"item 1: an item has masks of shape \(2, 8, 8\) for 1 labels"):
        collate_reference([_item(1), (image, masks, ["only one"])])
    with pytest.raises(ValueError, match=r"item 2: image of shape \(3, 9, 9\), but item 0 has \(3, 8, 8\)"):
        collate_reference([_item(1), _item(1), _item(1, size=9)])
    with pytest.raises(ValueError, match=r"item 1: masks of size \(5, 5\), but item 0 has \(8, 8\)"):
        collate_reference([_item(1), _item(1, mask_size=5)])
    with pytest.raises(TypeError, match="item 0: labels must be a list of strings"):
        collate_reference([(image, masks[:1], "cat")])
    with pytest.raises(ValueError, match=r"item 0: the image must be a tensor \[3, H, W\], got \(8, 8\)"):
        collate_reference([(image[0], masks, ["a", "b"])])


# ----------------------------------------------------------------------------------------------- COCO


@pytest.fixture
def coco(tmp_path):
    """A COCO instances file with every kind of annotation, and the masks each must decode to."""
    rng = _rng()
    images_dir = tmp_path / "val2017"
    images_dir.mkdir()
    h1, w1 = 30, 40
    _save(_random_image(h1, w1), images_dir / "000000000001.png")
    _save(_random_image(20, 25), images_dir / "000000000002.jpg")
    _save(_random_image(16, 16), images_dir / "000000000003.png")

    triangle = [3.2, 2.7, 35.6, 6.1, 12.4, 27.3]
    rle_mask = np.asfortranarray(rng.random((h1, w1)) > 0.6, dtype=np.uint8)
    compressed = mask_utils.encode(rle_mask)
    uncompressed_mask = rng.random((h1, w1)) > 0.5
    expected_rect = np.zeros((h1, w1), dtype=bool)
    expected_rect[5:9, 20:26] = True  # a rectangle polygon with integer corners: columns 20..25, rows 5..8
    clipped_rect = np.zeros((h1, w1), dtype=bool)
    clipped_rect[24:30, 30:40] = True  # partly outside: clipped to the image
    bbox_rect = np.zeros((h1, w1), dtype=bool)
    bbox_rect[2:6, 1:4] = True

    categories = [
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 10, "name": "traffic light", "supercategory": "outdoor"},
        {"id": 58, "name": "hot dog", "supercategory": "food"},
        {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    ]
    anns = [
        {"id": 101, "image_id": 1, "category_id": 1, "iscrowd": 0, "segmentation": [triangle],
         "bbox": [3.2, 2.7, 32.4, 24.6], "area": 1.0},
        {"id": 102, "image_id": 1, "category_id": 10, "iscrowd": 0,
         "segmentation": {"size": [h1, w1], "counts": compressed["counts"].decode("ascii")},
         "bbox": [0, 0, 1, 1], "area": 1.0},
        {"id": 103, "image_id": 1, "category_id": 58, "iscrowd": 0,
         "segmentation": {"size": [h1, w1], "counts": _uncompressed_counts(uncompressed_mask)},
         "bbox": [0, 0, 1, 1], "area": 1.0},
        {"id": 104, "image_id": 1, "category_id": 1, "iscrowd": 1,  # crowd: skipped
         "segmentation": {"size": [h1, w1], "counts": _uncompressed_counts(~uncompressed_mask)},
         "bbox": [0, 0, 40, 30], "area": 1.0},
        {"id": 105, "image_id": 1, "category_id": 90, "iscrowd": 0,  # entirely outside: skipped
         "segmentation": [[50.0, 40.0, 70.0, 40.0, 60.0, 55.0]], "bbox": [50, 40, 20, 15], "area": 1.0},
        {"id": 106, "image_id": 1, "category_id": 90, "iscrowd": 0,
         "segmentation": [[20, 5, 26, 5, 26, 9, 20, 9]], "bbox": [20, 5, 6, 4], "area": 24.0},
        {"id": 107, "image_id": 1, "category_id": 1, "iscrowd": 0,
         "segmentation": [[30, 24, 55, 24, 55, 45, 30, 45]], "bbox": [30, 24, 25, 21], "area": 1.0},
        {"id": 108, "image_id": 1, "category_id": 58, "iscrowd": 0,  # no segmentation: its box
         "segmentation": [], "bbox": [1.0, 2.0, 3.0, 4.0], "area": 12.0},
        {"id": 109, "image_id": 1, "category_id": 90, "iscrowd": 0,  # box entirely outside: skipped
         "segmentation": [], "bbox": [-9.0, 2.0, 5.0, 4.0], "area": 20.0},
        {"id": 301, "image_id": 3, "category_id": 1, "iscrowd": 1,
         "segmentation": {"size": [16, 16], "counts": [0, 256]}, "bbox": [0, 0, 16, 16], "area": 256.0},
    ]
    data = {
        "info": {"description": "test"},
        "licenses": [],
        "images": [
            {"id": 3, "file_name": "000000000003.png", "height": 16, "width": 16},
            {"id": 1, "file_name": "000000000001.png", "height": h1, "width": w1},
            {"id": 2, "file_name": "000000000002.jpg", "height": 20, "width": 25},
        ],
        "annotations": anns,
        "categories": categories,
    }
    annotation_file = tmp_path / "instances_val2017.json"
    annotation_file.write_text(json.dumps(data))
    inside, near = _inside_polygon(h1, w1, triangle)
    expected = {
        "labels": ["person", "traffic light", "hot dog", "toothbrush", "person", "hot dog"],
        "masks": [None, rle_mask.astype(bool), uncompressed_mask, expected_rect, clipped_rect, bbox_rect],
        "triangle": (inside, near),
    }
    return images_dir, annotation_file, data, expected


def test_coco_masks_labels_and_order(coco):
    images_dir, annotation_file, _, expected = coco
    dataset = CocoInstances(images_dir, annotation_file, transform=None)
    assert len(dataset) == 3 and dataset.ids == [1, 2, 3]
    image, masks, labels = dataset[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    expected_image = np.array(Image.open(images_dir / "000000000001.png").convert("RGB"))
    torch.testing.assert_close(image, torch.from_numpy(expected_image).permute(2, 0, 1).float() / 255)
    assert labels == expected["labels"]  # crowd and empty objects gone; multi-word names kept whole
    assert masks.shape == (6, 30, 40) and masks.dtype == torch.bool
    for m, want in enumerate(expected["masks"]):
        if want is not None:
            np.testing.assert_array_equal(masks[m].numpy(), want, err_msg=f"mask {m} ({labels[m]})")
    inside, near = expected["triangle"]
    got = masks[0].numpy()
    assert inside.sum() > 150 and (got[~near] == inside[~near]).all()  # the polygon, up to its edge pixels


def test_coco_images_without_objects(coco):
    images_dir, annotation_file, _, _ = coco
    dataset = CocoInstances(images_dir, annotation_file, transform=None)
    for index, size in ((1, (20, 25)), (2, (16, 16))):  # no annotation; only a crowd annotation
        image, masks, labels = dataset[index]
        assert image.shape == (3, *size) and masks.shape == (0, *size) and masks.dtype == torch.bool
        assert labels == []
    assert CocoInstances(images_dir, annotation_file, skip_empty=True).ids == [1]


def test_coco_default_transform_and_loader(coco):
    images_dir, annotation_file, _, expected = coco
    dataset = CocoInstances(images_dir, annotation_file)
    image, masks, labels = dataset[0]
    assert image.shape == (3, 224, 224) and masks.shape == (6, 224, 224) and labels == expected["labels"]
    raw_image = Image.open(images_dir / "000000000001.png")
    want_image, want_masks = ReferenceTransform()(raw_image, CocoInstances(images_dir, annotation_file, None)[0][1])
    torch.testing.assert_close(image, want_image)
    assert torch.equal(masks, want_masks) and masks.sum() > 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_reference)
    batches = list(loader)
    assert [b[0].shape[0] for b in batches] == [2, 1]
    assert batches[0][1].shape == (6, 224, 224) and batches[0][2].tolist() == [0] * 6
    assert batches[1][1].shape == (0, 224, 224)
    copy = pickle.loads(pickle.dumps(dataset))  # what DataLoader workers receive
    assert torch.equal(copy[0][1], masks) and copy[0][2] == labels


def test_coco_category_filter(coco):
    images_dir, annotation_file, _, _ = coco
    dataset = CocoInstances(images_dir, annotation_file, transform=None, categories=["hot dog"], skip_empty=True)
    assert dataset.ids == [1]
    assert dataset[0][2] == ["hot dog", "hot dog"]
    with pytest.raises(ValueError, match=r"categories \['zebra'\] are not in .*instances_val2017.json"):
        CocoInstances(images_dir, annotation_file, categories=["zebra"])


def test_coco_errors_name_the_file(coco, tmp_path):
    images_dir, annotation_file, data, _ = coco
    with pytest.raises(FileNotFoundError, match="COCO annotation file .*missing.json"):
        CocoInstances(images_dir, tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="image_dir .*nowhere"):
        CocoInstances(tmp_path / "nowhere", annotation_file)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match="COCO annotation file .*broken.json.* is not valid JSON"):
        CocoInstances(images_dir, broken)
    broken.write_text("[1, 2]")
    with pytest.raises(ValueError, match="broken.json.* must hold a JSON object with an 'images' list"):
        CocoInstances(images_dir, broken)
    bad = json.loads(json.dumps(data))
    bad["annotations"][2]["category_id"] = 77
    broken.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"broken.json.*annotations\[2\] \(id 103\) refers to unknown category_id 77"):
        CocoInstances(images_dir, broken)
    bad = json.loads(json.dumps(data))
    del bad["images"][1]["file_name"]
    broken.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"broken.json.*images\[1\] needs 'id', 'file_name'"):
        CocoInstances(images_dir, broken)

    (images_dir / "000000000002.jpg").unlink()
    dataset = CocoInstances(images_dir, annotation_file)
    dataset[0]  # the others still load
    with pytest.raises(FileNotFoundError, match="image file .*000000000002.jpg.* does not exist"):
        dataset[1]
    (images_dir / "000000000003.png").write_bytes(b"not an image at all")
    with pytest.warns(UserWarning, match="skipped item 2: image file .*000000000003.png.* cannot be read as an image"):
        assert dataset[2][2] == []
    with pytest.raises(ValueError, match="image file .*000000000003.png.* cannot be read as an image"):
        CocoInstances(images_dir, annotation_file, on_bad_image="raise")[2]
    _save(_random_image(12, 16), images_dir / "000000000003.png")
    with pytest.raises(ValueError, match=r"000000000003.png.* is 16x12 .* says 16x16"):
        dataset[2]


# ----------------------------------------------------------------------------------------------- Visual Genome


def _box(x, y, w, h, **extra):
    return {"x": x, "y": y, "w": w, "h": h, **extra}


@pytest.fixture
def vg(tmp_path):
    """Images in two directories (as VG_100K and VG_100K_2) and an official-layout vg_objects.json."""
    first, second = tmp_path / "VG_100K", tmp_path / "VG_100K_2"
    first.mkdir()
    second.mkdir()
    _save(_random_image(40, 50), first / "1.jpg")  # H 40, W 50
    _save(_random_image(30, 30), second / "7.jpg")
    _save(_random_image(24, 20), first / "12.jpg")
    objects = [
        {"image_id": 1, "objects": {
            "Tree ": [_box(2, 3, 10, 5), _box(6, 20, 4, 8)],  # same name: one mask, both boxes
            "man": [_box(40, 30, 20, 20)],  # partly outside: clipped
            "cloud": [_box(60, 5, 10, 10), _box(-20, -20, 5, 5)],  # entirely outside: dropped
            "zzz not a label": [_box(0, 0, 5, 5)],  # not a label: ignored
        }},
        {"image_id": 7, "objects": {"dog": [_box(0, 0, 3, 2)]}},
        {"image_id": 12, "objects": {}},
    ]
    path = tmp_path / "vg_objects.json"
    path.write_text(json.dumps(objects))
    tree = np.zeros((40, 50), dtype=bool)
    tree[3:8, 2:12] = True
    tree[20:28, 6:10] = True
    man = np.zeros((40, 50), dtype=bool)
    man[30:40, 40:50] = True
    return [first, second], path, {"tree": tree, "man": man}


def test_visual_genome_official_layout(vg):
    dirs, path, expected = vg
    dataset = VisualGenomeObjects(dirs, path, transform=None)
    assert len(dataset) == 3 and dataset.ids == [1, 7, 12]
    image, masks, labels = dataset[0]
    assert image.shape == (3, 40, 50) and labels == ["tree", "man"]
    assert masks.shape == (2, 40, 50) and masks.dtype == torch.bool
    np.testing.assert_array_equal(masks[0].numpy(), expected["tree"])
    np.testing.assert_array_equal(masks[1].numpy(), expected["man"])
    assert dataset.image_path(1) == dirs[1] / "7.jpg"  # found in the second directory
    _, masks, labels = dataset[1]
    assert labels == ["dog"] and masks[0].sum() == 6 and masks[0, :2, :3].all()
    image, masks, labels = dataset[2]  # no object
    assert image.shape == (3, 24, 20) and masks.shape == (0, 24, 20) and labels == []
    assert VisualGenomeObjects(dirs, path, skip_empty=True).ids == [1, 7]


def test_visual_genome_default_transform_and_labels(vg):
    dirs, path, _ = vg
    image, masks, labels = VisualGenomeObjects(dirs, path)[0]
    assert image.shape == (3, 224, 224) and masks.shape == (2, 224, 224) and labels == ["tree", "man"]
    assert masks.sum() > 0 and image.std() > 0.5
    copy = pickle.loads(pickle.dumps(VisualGenomeObjects(dirs, path)))  # what DataLoader workers receive
    assert torch.equal(copy[0][1], masks)
    assert VisualGenomeObjects(dirs, path, labels=["Man", "dog"])[0][2] == ["man"]
    assert VisualGenomeObjects(dirs, path, labels="all", transform=None)[0][2] == ["tree", "man", "zzz not a label"]


def test_visual_genome_raw_objects_json(tmp_path):
    _save(_random_image(20, 30), tmp_path / "5.jpg")
    objects = [{"image_id": 5, "image_url": "https://example/5.jpg", "objects": [
        _box(1, 1, 4, 4, object_id=1, names=["shirt"], synsets=["shirt.n.01"]),
        _box(20, 10, 5, 5, object_id=2, names=["hat", " SHIRT"], synsets=[]),  # two names: both count
        _box(10, 15, 30, 30, object_id=3, name="hat"),  # older VG versions write "name"
        _box(3, 3, 2, 2, object_id=4, names=["unlisted"]),
    ]}]
    path = tmp_path / "objects.json"
    path.write_text(json.dumps(objects))
    dataset = VisualGenomeObjects(tmp_path, path, labels=["shirt", "hat"], transform=None)
    _, masks, labels = dataset[0]
    shirt, hat = np.zeros((2, 20, 30), dtype=bool)
    shirt[1:5, 1:5] = shirt[10:15, 20:25] = True
    hat[10:15, 20:25] = hat[15:20, 10:30] = True
    assert labels == ["shirt", "hat"]
    np.testing.assert_array_equal(masks.numpy(), np.stack([shirt, hat]))


def test_visual_genome_errors_name_the_file(vg, tmp_path):
    dirs, path, _ = vg
    with pytest.raises(FileNotFoundError, match="Visual Genome objects file .*nothing.json"):
        VisualGenomeObjects(dirs, tmp_path / "nothing.json")
    with pytest.raises(FileNotFoundError, match="image_dir .*VG_100K_3"):
        VisualGenomeObjects([dirs[0], tmp_path / "VG_100K_3"], path)
    broken = tmp_path / "broken.json"
    broken.write_text("[{]")
    with pytest.raises(ValueError, match="Visual Genome objects file .*broken.json.* is not valid JSON"):
        VisualGenomeObjects(dirs, broken)
    broken.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(ValueError, match="broken.json.* must hold a JSON list"):
        VisualGenomeObjects(dirs, broken)
    broken.write_text(json.dumps([{"image_id": 1, "objects": {}}, {"image_id": 2}]))
    with pytest.raises(ValueError, match="broken.json.*entry 1 must be an object with 'image_id' and 'objects'"):
        VisualGenomeObjects(dirs, broken)
    broken.write_text(json.dumps([{"image_id": 4, "objects": {"tree": [{"x": 1, "y": 2, "h": 3}]}}]))
    with pytest.raises(ValueError, match=r"broken.json.*entry 0 \(image_id 4\) object 'tree': a box needs"):
        VisualGenomeObjects(dirs, broken)
    with pytest.raises(TypeError, match="labels must be a list of names, None or 'all'"):
        VisualGenomeObjects(dirs, path, labels="tree")
    (dirs[1] / "7.jpg").unlink()
    dataset = VisualGenomeObjects(dirs, path)
    with pytest.raises(FileNotFoundError, match="image file .*VG_100K/7.jpg.*VG_100K_2/7.jpg.* does not exist"):
        dataset[1]
