"""Hostile input files: truncated, corrupted or malformed files in exactly the formats lavise_fast reads
(explainer checkpoints, result and evaluation JSON, GloVe text, COCO and Visual Genome JSON, images,
word lists) and masks of the wrong size. Each gives one error naming the file and what is wrong, or a
warning naming what was skipped; a failing write never leaves a partial or temporary file behind."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import warnings
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch import nn

from lavise_fast import cli, vocabularies
from lavise_fast.data import CocoInstances, VisualGenomeObjects, collate_reference
from lavise_fast.explainer import Explainer
from lavise_fast.files import atomic_torch_save, atomic_write, atomic_write_json
from lavise_fast.pooling import pool_reference
from lavise_fast.result import ExplainResult
from lavise_fast.semantics import GloVe, Static, Vocabulary


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def one_line_error(capsys, *argv: str) -> str:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


def png(path, height=12, width=16, seed=0) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


# ------------------------------------------------------------------------------------------ atomic writes


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_atomic_writes_give_the_mode_a_plain_open_gives(tmp_path, mask):
    with umask(mask):
        written = [
            atomic_write(tmp_path / "a.bin", b"\x00\x01"),
            atomic_write(tmp_path / "b.txt", "café\n"),
            atomic_write_json(tmp_path / "c.json", {"word": "東京"}),
            atomic_torch_save({"x": torch.ones(2)}, tmp_path / "d.pt"),
        ]
        Explainer(4, 3).save(tmp_path / "e.pt")
        with open(tmp_path / "plain", "w") as f:
            f.write("x")
    want = (tmp_path / "plain").stat().st_mode & 0o777
    assert want == 0o666 & ~mask
    for path in [*written, tmp_path / "e.pt"]:
        assert path.stat().st_mode & 0o777 == want, path
    assert (tmp_path / "b.txt").read_bytes() == "café\n".encode()
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8")) == {"word": "東京"}
    assert torch.equal(torch.load(tmp_path / "d.pt", weights_only=True)["x"], torch.ones(2))
    assert listing(tmp_path) == ["a.bin", "b.txt", "c.json", "d.pt", "e.pt", "plain"]


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, failure):
    path = tmp_path / "result.json"
    path.write_text('{"old": true}')

    def half_then_fail(f):
        f.write(b'{"new": ')
        raise failure

    with pytest.raises(type(failure)):
        atomic_write(path, half_then_fail)
    assert path.read_text() == '{"old": true}'
    assert listing(tmp_path) == ["result.json"]


def test_json_that_cannot_be_serialised_writes_nothing(tmp_path):
    path = tmp_path / "evaluation.json"
    path.write_text("old")
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic_write_json(path, {"recall": object()})
    assert path.read_text() == "old" and listing(tmp_path) == ["evaluation.json"]


def test_atomic_write_names_a_missing_folder_or_a_folder_target(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cannot write .*x.json.*the folder .*nowhere.* does not exist"):
        atomic_write_json(tmp_path / "nowhere" / "x.json", {})
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        atomic_write(tmp_path, b"x")
    assert listing(tmp_path) == []


def test_json_keeps_any_str_even_an_undecodable_file_name(tmp_path):
    name = b"caf\xe9.png".decode("utf-8", "surrogateescape")  # a Latin-1 file name on a UTF-8 system
    path = atomic_write_json(tmp_path / "r.json", {"files": [name, "東京.png"]})
    assert json.loads(path.read_text(encoding="utf-8"))["files"] == [name, "東京.png"]


# ------------------------------------------------------------------------------------------ explainer checkpoints


@pytest.fixture
def explainer_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "explainer.pt"
    Explainer(8, 4, layer="layer2", space="test", seen=["café"], unseen=["東京"]).save(path)
    return path


def _flip_inside_the_largest_entry(data: bytes, path) -> bytes:
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    at = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


def _state_dict_only(path):
    torch.save({"head.0.weight": torch.ones(8)}, path)


def _wrong_weights(path):
    payload = torch.load(path, weights_only=True)
    payload["config"]["channels"] = 9
    torch.save(payload, path)


def _no_dim(path):
    payload = torch.load(path, weights_only=True)
    del payload["config"]["dim"]
    torch.save(payload, path)


def _newer(path):
    payload = torch.load(path, weights_only=True)
    payload["format"] = "lavise_fast.explainer/9"
    torch.save(payload, path)


def _seen_as_a_string(path):
    payload = torch.load(path, weights_only=True)
    payload["config"]["seen"] = "red"
    torch.save(payload, path)


def _torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(nn.Sequential(nn.Linear(2, 2))).save(str(path))


def _folder(path):
    path.unlink()
    path.mkdir()


@pytest.mark.parametrize(
    "corrupt, problem",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "no complete zip archive"),
        (lambda p: p.write_bytes(p.read_bytes()[:-1]), "no complete zip archive"),
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (lambda p: p.write_bytes(b'{"format": "lavise_fast.explainer/1"}'), "no complete zip archive"),
        (lambda p: p.write_bytes(_flip_inside_the_largest_entry(p.read_bytes(), p)), "checksum of its part"),
        (_state_dict_only, r"not a lavise_fast explainer: expected .* found a dict of \['head.0.weight'\]"),
        (_wrong_weights, "damaged: .*size mismatch for head"),
        (_no_dim, "damaged: .*missing 1 required positional argument: 'dim'"),
        (_newer, r"is an explainer of format 'lavise_fast.explainer/9', which this lavise_fast does not read"),
        (_seen_as_a_string, r"damaged: .*seen must be a list of words \(strings\), got 'red'"),
        (_torchscript, r"is a TorchScript model \(torch.jit.save\), not a file written by torch.save"),
        (_folder, "is a folder, not a file"),
    ],
    ids=["half", "last-byte", "empty", "json", "bit-flip", "state-dict", "wrong-weights", "no-dim", "newer",
         "seen-string", "torchscript", "folder"],
)
def test_damaged_explainer_file_is_one_value_error_naming_it(explainer_file, corrupt, problem):
    Explainer.load(explainer_file)  # intact, it loads
    corrupt(explainer_file)
    with pytest.raises(ValueError, match=rf"explainer file '.*explainer.pt' .*{problem}"):
        Explainer.load(explainer_file)


def test_truncated_explainer_on_the_command_line_is_one_line_and_writes_nothing(capsys, explainer_file, tmp_path):
    explainer_file.write_bytes(explainer_file.read_bytes()[:200])
    out = tmp_path / "out" / "result.json"
    line = one_line_error(
        capsys, "explain", "--model", "resnet18", "--explainer", str(explainer_file), "--world", "2", "--out", str(out)
    )
    assert line.startswith("lavise-fast explain: error: explainer file ") and "explainer.pt" in line
    assert "no complete zip archive" in line
    assert not out.exists() and listing(out.parent) == []


def tiny_net() -> nn.Sequential:
    """Five filters at full resolution (layers ``conv`` and ``relu``); TorchScript keeps the names."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 5, 3, padding=1), relu=nn.ReLU())).eval()


def torchscript_file(path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(tiny_net()).save(str(path))
    return str(path)


def test_truncated_pooled_feature_cache_is_logged_and_rebuilt(tmp_path, caplog):
    from lavise_fast.data import ConceptWorld

    model, world = tiny_net(), ConceptWorld(6, image_size=16, seed=0)
    cache = tmp_path / "pooled.npy"
    vectors, labels, _ = pool_reference(model, world, "relu", cache=cache, progress=False)
    want = np.array(vectors)
    cache.write_bytes(cache.read_bytes()[:-7])
    with caplog.at_level(logging.WARNING, logger="lavise_fast.explainer"):
        again, labels_again, _ = pool_reference(model, world, "relu", cache=cache, progress=False)
    assert "ignoring the unreadable pooled-feature cache" in caplog.text and "pooled.npy" in caplog.text
    np.testing.assert_array_equal(np.array(again), want)
    assert labels_again == labels and listing(tmp_path) == ["pooled.npy", "pooled.npy.json"]


# ------------------------------------------------------------------------------------------ result and evaluation JSON


def result_json(path) -> None:
    ExplainResult(
        filters=[0, 1],
        words=[["café", "red"], ["東京"]],
        scores=[[2.0, 1.0], [3.0]],
        top_images=[[0, 1], [1]],
        top_activations=[[2.0, 1.0], [3.0]],
        thresholds=[0.5, 0.25],
        settings={"layer": "relu"},
    ).save(path)


def test_truncated_or_foreign_result_json_is_one_value_error_naming_it(tmp_path):
    path = tmp_path / "result.json"
    result_json(path)
    assert ExplainResult.load(path).words == [["café", "red"], ["東京"]]
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: len(text) // 2], encoding="utf-8")
    with pytest.raises(ValueError, match="result.json"):
        ExplainResult.load(path)
    path.write_text("[1, 2, 3]")
    with pytest.raises(ValueError, match="result.json"):
        ExplainResult.load(path)


def test_truncated_result_and_evaluation_on_the_command_line(capsys, tmp_path):
    result, evaluation, out = tmp_path / "result.json", tmp_path / "evaluation.json", tmp_path / "report.html"
    result_json(result)
    text = result.read_text(encoding="utf-8")
    evaluation.write_text('{"recall@5": 0.5, "seen": {"recall@5": 0.25}, "unseen": {"rec', encoding="utf-8")
    line = one_line_error(
        capsys, "report", "--result", str(result), "--evaluation", str(evaluation), "--no-images", "--out", str(out)
    )
    assert "evaluation file" in line and "evaluation.json" in line and "truncated?" in line
    result.write_text(text[:-20], encoding="utf-8")
    for argv in (
        ["report", "--result", str(result), "--no-images", "--out", str(out)],
        ["compare", str(result), str(result), "--table", str(tmp_path / "t.csv")],
        ["evaluate", "--model", "resnet18", "--result", str(result), "--world", "2", "--out", str(tmp_path / "e.json")],
    ):
        line = one_line_error(capsys, *argv)
        assert line.startswith(f"lavise-fast {argv[0]}: error: ") and "result.json" in line
    assert listing(tmp_path) == ["evaluation.json", "result.json"]


# ------------------------------------------------------------------------------------------ GloVe text files

GLOVE = "the 0.1 0.2 0.3\ncafé 0.4 -0.5 0.6\n東京 1.0 0.0 -1.0\nred 0.5 0.5 0.5\n"


@pytest.mark.parametrize(
    "content, problem",
    [
        (GLOVE[:-5].encode(), r"vectors.txt:4: expected a word and 3 numbers, got 3 fields"),
        (GLOVE.encode().replace(b"0.6", b"0.\xff6"), r"vectors.txt:2: not UTF-8 text \(byte 0xff\)"),
        (GLOVE.replace("-0.5", "nan").encode(), r"vectors.txt:2: the vector of 'café' holds NaN or infinity"),
        (GLOVE.replace("1.0 0.0", "1.0 zero").encode(), r"vectors.txt:3: the vector of '東京' holds a non-number"),
        (
            ("5 3\n" + GLOVE).encode(),
            r"vectors.txt: its word2vec header announces 5 words, the file holds 4 "
            r"\(truncated\?\)",
        ),
        (b"\n\n", "vectors.txt: no word vectors found"),
        (b"\x80\x03cword2vec binary", r"vectors.txt:1: not UTF-8 text"),
    ],
    ids=["cut-mid-line", "bad-utf8", "nan", "non-number", "header-count", "blank", "binary"],
)
def test_malformed_glove_file_is_one_value_error_naming_file_and_line(tmp_path, content, problem):
    path = tmp_path / "vectors.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=problem):
        GloVe(path)
    assert listing(tmp_path) == ["vectors.txt"]  # no cache of a file that did not parse


def test_glove_file_with_non_ascii_spaced_blank_and_repeated_words(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_bytes(("\ufeff" + GLOVE + "red 9 9 9\r\n. . . 1 2 3\n\n  0.1 0.1 0.1\nnew 1 2 3 4\n").encode()[:-1])
    with pytest.raises(ValueError, match=r"vectors.txt:9: expected a word and 3 numbers, got 5 fields"):
        GloVe(path)  # "new 1" is not a word: a number in a word means two lines ran together
    path.write_bytes(("\ufeff" + GLOVE + "red 9 9 9\r\n. . . 1 2 3\n\n  0.1 0.1 0.1\n").encode()[:-1])
    with pytest.warns(UserWarning) as caught:
        space = GloVe(path)
    messages = [str(w.message) for w in caught]
    assert any("1 duplicate word(s) ['red'] and 1 blank word(s) skipped" in m for m in messages), messages
    assert any("the last line (8) has no line break: the file may be truncated" in m for m in messages), messages
    assert {"the", "café", "東京", "red", ". . ."} <= set(space._index)
    torch.testing.assert_close(space.encode(["red"]), torch.full((1, 3), 3**-0.5))
    # The cache written beside the file holds the same non-ASCII words and is read back.
    assert len(listing(tmp_path)) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached = GloVe(path)
    assert list(cached._index) == list(space._index)
    torch.testing.assert_close(cached.encode(["café", "東京"]), space.encode(["café", "東京"]))


@pytest.mark.parametrize("damage", ["truncate-npy", "empty-npy", "fewer-words", "latin1-words"])
def test_damaged_glove_cache_is_logged_and_rewritten(tmp_path, caplog, damage):
    path = tmp_path / "vectors.txt"
    path.write_text(GLOVE, encoding="utf-8")
    first = GloVe(path)
    vectors_file = next(tmp_path.glob("vectors.txt.*.npy"))
    words_file = next(tmp_path.glob("vectors.txt.*.words.txt"))
    if damage == "truncate-npy":
        vectors_file.write_bytes(vectors_file.read_bytes()[:-5])
    elif damage == "empty-npy":
        vectors_file.write_bytes(b"")
    elif damage == "fewer-words":
        words_file.write_text("the\ncafé", encoding="utf-8")
    else:
        words_file.write_bytes("the\ncafé\n東京\nred".encode().replace("é".encode(), b"\xe9"))
    with caplog.at_level(logging.WARNING, logger="lavise_fast.semantics"):
        again = GloVe(path)
    assert "ignoring the unreadable GloVe cache" in caplog.text
    torch.testing.assert_close(again.encode(["café", "東京"]), first.encode(["café", "東京"]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lavise_fast.semantics"):
        GloVe(path)  # rewritten: read back without complaint
    assert caplog.text == ""


# ------------------------------------------------------------------------------------------ COCO and Visual Genome


@pytest.fixture
def coco_files(tmp_path):
    images = tmp_path / "val2017"
    images.mkdir()
    for i in (1, 2, 3):
        png(images / f"{i:012d}.png", seed=i)
    rle = mask_utils.encode(np.asfortranarray(np.eye(12, 16, dtype=np.uint8)))
    data = {
        "images": [{"id": i, "file_name": f"{i:012d}.png", "height": 12, "width": 16} for i in (1, 2, 3)],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [1, 1, 4, 4],
                "area": 16.0,
                "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]],
            },
            {
                "id": 11,
                "image_id": 2,
                "category_id": 2,
                "iscrowd": 0,
                "bbox": [0, 0, 12, 12],
                "area": 12.0,
                "segmentation": {"size": [12, 16], "counts": rle["counts"].decode("ascii")},
            },
            {
                "id": 12,
                "image_id": 3,
                "category_id": 2,
                "iscrowd": 0,
                "bbox": [2, 2, 3, 3],
                "area": 9.0,
                "segmentation": [],
            },
        ],
        "categories": [{"id": 1, "name": "café"}, {"id": 2, "name": "traffic light"}],
    }
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return images, annotations, data


def test_coco_files_as_written_load(coco_files):
    images, annotations, _ = coco_files
    dataset = CocoInstances(images, annotations, transform=None)
    assert [dataset[i][2] for i in range(3)] == [["café"], ["traffic light"], ["traffic light"]]


def test_truncated_coco_json_says_so_and_names_the_file(coco_files):
    images, annotations, _ = coco_files
    text = annotations.read_text(encoding="utf-8")
    for cut in (len(text) // 3, len(text) - 2):
        annotations.write_text(text[:cut], encoding="utf-8")
        with pytest.raises(
            ValueError,
            match=r"COCO annotation file '.*instances.json' is not valid JSON "
            r"\(it ends early: truncated\?\)",
        ):
            CocoInstances(images, annotations)
    annotations.write_text(text.replace('"iscrowd"', ',"iscrowd"', 1), encoding="utf-8")
    with pytest.raises(ValueError, match=r"instances.json' is not valid JSON: Expecting"):
        CocoInstances(images, annotations)
    annotations.write_bytes(text.encode("utf-8").replace("café".encode(), b"caf\xe9"))
    with pytest.raises(ValueError, match=r"instances.json' is not UTF-8 JSON text \(byte \d+ is 0xe9\)"):
        CocoInstances(images, annotations)
    annotations.write_text("")
    with pytest.raises(ValueError, match=r"instances.json' is empty"):
        CocoInstances(images, annotations)


@pytest.mark.parametrize(
    "edit, problem",
    [
        (
            lambda d: d["annotations"][2].update(bbox=[2, 2, 3]),
            r"annotations\[2\] \(id 12\) has no segmentation "
            r"and a bad bbox \[2, 2, 3\]",
        ),
        (lambda d: d["images"].append(dict(d["images"][0])), r"images\[3\] repeats the id 1"),
        (lambda d: d["images"][1].update(id={"a": 1}), r"images\[1\] has a bad id \{'a': 1\}"),
        (lambda d: d["images"][0].update(file_name=None), r"images\[0\] has a bad file_name None"),
        (lambda d: d["images"][0].update(height="12"), r"images\[0\] has a bad height/width"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 3e9, 1, 5, 5, 1, 5]]),
         r"annotations\[0\] \(id \d+\) has a segmentation polygon with coordinates that are not finite numbers "
         r"within \+-1048576 pixels: \[3000000000.0\]"),
        (lambda d: d["annotations"][2].update(bbox=[2, 2, 1e308, 3]),
         r"annotations\[2\] \(id 12\) has a bbox with coordinates .*\[1e\+308\]"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 1, "5", 1, 5, 5]]),
         r"annotations\[0\] \(id 10\) has a segmentation polygon with coordinates .*\['5'\]"),
    ],
    ids=["bbox", "repeated-id", "id", "file-name", "height", "polygon-3e9", "box-1e308", "polygon-string"],
)
def test_malformed_coco_entries_name_the_file_and_entry(coco_files, edit, problem):
    images, annotations, data = coco_files
    edit(data)
    annotations.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=rf"COCO annotation file '.*instances.json': {problem}"):
        CocoInstances(images, annotations)


def test_coco_mask_of_the_wrong_size_names_file_annotation_and_sizes(coco_files):
    images, annotations, data = coco_files
    rle = mask_utils.encode(np.asfortranarray(np.ones((10, 10), dtype=np.uint8)))
    data["annotations"][1]["segmentation"] = {"size": [10, 10], "counts": rle["counts"].decode("ascii")}
    annotations.write_text(json.dumps(data), encoding="utf-8")
    dataset = CocoInstances(images, annotations)
    with pytest.raises(
        ValueError,
        match=r"instances.json': annotation 11 decodes to a 10x10 mask, but its image "
        r"is 12x16",
    ):
        dataset[1]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_undecodable_coco_image_is_skipped_with_a_warning(coco_files, damage):
    images, annotations, _ = coco_files
    bad = images / "000000000002.png"
    bad.write_bytes({"truncated": bad.read_bytes()[:60], "garbage": os.urandom(300), "empty": b""}[damage])
    dataset = CocoInstances(images, annotations)
    with pytest.warns(
        UserWarning,
        match=r"skipped item 1: image file '.*000000000002.png' cannot be read as an "
        r"image: .*; a blank image with no object stands in its place",
    ):
        image, masks, labels = dataset[1]
    assert image.shape == (3, 224, 224) and not image.any()
    assert masks.shape == (0, 224, 224) and labels == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dataset[0][2] == ["café"]  # the other items are untouched
    assert collate_reference([dataset[0], (image, masks, labels)])[3] == ["café"]  # it batches with the others
    strict = CocoInstances(images, annotations, on_bad_image="raise")
    with pytest.raises(ValueError, match=r"image file '.*000000000002.png' cannot be read as an image"):
        strict[1]
    bad.unlink()
    with pytest.raises(FileNotFoundError, match="000000000002.png"):  # missing: a wrong folder, never skipped
        dataset[1]
    with pytest.raises(ValueError, match="on_bad_image must be one of"):
        CocoInstances(images, annotations, on_bad_image="ignore")


@pytest.fixture
def vg_files(tmp_path):
    images = tmp_path / "VG_100K"
    images.mkdir()
    png(images / "1.jpg", seed=1)  # PIL reads by content, not by suffix
    png(images / "2.jpg", seed=2)
    data = [
        {"image_id": 1, "objects": {"café": [{"x": 1, "y": 1, "w": 5, "h": 4}]}},
        {"image_id": 2, "objects": [{"object_id": 7, "x": 0, "y": 0, "w": 3, "h": 3, "names": ["Tree"]}]},
    ]
    objects = tmp_path / "objects.json"
    objects.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return images, objects


def test_visual_genome_hostile_files(vg_files):
    images, objects = vg_files
    dataset = VisualGenomeObjects(images, objects, labels="all", transform=None)
    assert [dataset[0][2], dataset[1][2]] == [["café"], ["tree"]]
    text = objects.read_text(encoding="utf-8")
    objects.write_text(text[:-30], encoding="utf-8")
    with pytest.raises(
        ValueError,
        match=r"Visual Genome objects file '.*objects.json' is not valid JSON \(it ends "
        r"early: truncated\?\)",
    ):
        VisualGenomeObjects(images, objects, labels="all")
    objects.write_text(text.replace('"w": 5', '"w": NaN'), encoding="utf-8")
    with pytest.raises(
        ValueError,
        match=r"objects.json': entry 0 \(image_id 1\) object 'café': a box needs numbers "
        r".*expected a finite number, got nan",
    ):
        VisualGenomeObjects(images, objects, labels="all")
    objects.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"filename must be a format string with the field \{image_id\}"):
        VisualGenomeObjects(images, objects, labels="all", filename="{id}.jpg")
    (images / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole jpeg")
    with pytest.warns(UserWarning, match=r"skipped item 1: image file '.*2.jpg' cannot be read as an image"):
        image, masks, labels = VisualGenomeObjects(images, objects, labels="all")[1]
    assert image.shape == (3, 224, 224) and not image.any() and masks.shape == (0, 224, 224) and labels == []
    with pytest.raises(ValueError, match=r"image file '.*2.jpg' cannot be read"):
        VisualGenomeObjects(images, objects, labels="all", on_bad_image="raise")[1]


def test_a_failing_train_leaves_no_explainer_file(capsys, coco_files, tmp_path):
    """The reference set breaks in the middle of the run (a segmentation that does not decode): exit 2,
    one line naming the annotation file, and neither the explainer nor a temporary file is left."""
    images, annotations, data = coco_files
    data["annotations"][1]["segmentation"] = {"size": [12, 16], "counts": 12345}
    annotations.write_text(json.dumps(data), encoding="utf-8")
    model = torchscript_file(tmp_path / "model.pt")
    out = tmp_path / "trained" / "explainer.pt"
    line = one_line_error(
        capsys,
        "train",
        "--model",
        model,
        "--layer",
        "relu",
        "--coco",
        str(images),
        str(annotations),
        "--no-progress",
        "--out",
        str(out),
    )
    assert "instances.json" in line and "annotation 11 cannot be decoded" in line
    assert listing(out.parent) == []


# ------------------------------------------------------------------------------------------ masks of the wrong size


def test_masks_that_do_not_fit_their_image_are_refused_by_the_collate():
    image = torch.zeros(3, 224, 224)
    with pytest.raises(
        ValueError,
        match=r"item 1: masks of size \(480, 640\) for an image of size \(224, 224\); "
        r"expected the image's size or a resized copy",
    ):
        collate_reference([(image, torch.ones(1, 224, 224), ["a"]), (image, torch.ones(2, 480, 640), ["b", "c"])])
    with pytest.raises(ValueError, match=r"masks of size \(0, 0\)"):
        collate_reference([(image, torch.ones(1, 0, 0), ["a"])])
    # A resized copy (same aspect ratio, to a pixel) is fine; so is an item without objects.
    images, masks, rows, labels = collate_reference(
        [
            (torch.zeros(3, 225, 300), torch.ones(1, 112, 150), ["a"]),
            (torch.zeros(3, 225, 300), torch.ones(0, 112, 150), []),
        ]
    )
    assert masks.shape == (1, 112, 150) and rows.tolist() == [0] and labels == ["a"]


class Items(torch.utils.data.Dataset):
    """Reference items of 16 x 16 images; item ``bad`` has masks of 16 x 12."""

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index):
        masks = torch.ones(1, 16, 12 if index == self.bad else 16, dtype=torch.bool)
        return torch.rand(3, 16, 16), masks, ["red"]


def test_pool_reference_names_the_items_of_a_batch_with_wrong_masks():
    model = tiny_net()
    vectors, labels, _ = pool_reference(model, Items(bad=-1), "relu", batch_size=4, progress=False)
    assert vectors.shape == (6, 5) and labels == [["red"]] * 6
    with pytest.raises(
        ValueError,
        match=r"in the batch of reference items 4 to 7: item 1: masks of size \(16, 12\) "
        r"for an image of size \(16, 16\)",
    ):
        pool_reference(model, Items(bad=5), "relu", batch_size=4, progress=False)


# ------------------------------------------------------------------------------------------ word lists


def test_word_list_file_blank_lines_repeats_non_ascii_bom_and_crlf(tmp_path):
    path = tmp_path / "words.txt"
    path.write_bytes("\ufeffcafé\r\n\r\n  traffic light \nnaïve\n東京\ncafé\n\t\nnaïve\r\ncafé".encode())
    with pytest.warns(
        UserWarning,
        match=r"word list '.*words.txt': 2 word\(s\) repeat and are kept once, at their "
        r"first line: 'café' on lines 1, 6, 9; 'naïve' on lines 4, 8",
    ):
        words = vocabularies.read_word_list(path)
    assert words == ["café", "traffic light", "naïve", "東京"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path.write_text("a\nb\n", encoding="utf-8")
        assert vocabularies.read_word_list(path) == ["a", "b"]  # no repeat: no warning


@pytest.mark.parametrize(
    "content, problem",
    [
        ("red\ncafé\n".encode("latin-1"), r"is not UTF-8 text: line 2 holds the byte 0xe9"),
        (b"red\n\x00\x01\x02", r"is not a text file \(it holds NUL bytes\)"),
        (b" \n\n\t\n", r"holds no word \(3 line\(s\), all blank\)"),
        (b"", r"holds no word"),
    ],
    ids=["latin-1", "binary", "blank", "empty"],
)
def test_unreadable_word_list_is_one_value_error_naming_it(tmp_path, content, problem):
    path = tmp_path / "words.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"word list '.*words.txt' {problem}"):
        vocabularies.read_word_list(path)


def test_vocabulary_arguments():
    space = Static(["café", "東京", "red"], torch.eye(3))
    vocab = Vocabulary.from_words(["café", " 東京 ", "", "café", "red", "red"], space)
    assert vocab.words == ["café", "東京", "red"]
    with pytest.raises(TypeError, match="words must be a list of words, got the string 'café'"):
        Vocabulary.from_words("café", space)
    with pytest.raises(TypeError, match=r"words\[1\] must be a string, got NoneType None"):
        Vocabulary.from_words(["red", None], space)
    with pytest.raises(ValueError, match="words holds no word"):
        Vocabulary.from_words(["", "  "], space)
    with pytest.raises(ValueError, match=r"words must be distinct; \['café'\] repeat"):
        Vocabulary(["café", "red", "café"], torch.eye(3))
    with pytest.raises(ValueError, match="vectors must be finite"):
        Vocabulary(["café"], torch.tensor([[float("nan"), 1.0]]))


def test_word_list_and_glove_with_non_ascii_words_end_to_end_on_the_command_line(capsys, tmp_path):
    """A GloVe file and a word list (blank lines, a repeat, non-ASCII words) through train, explain and
    the result file: the words come back exactly as written."""
    from lavise_fast.data import ConceptWorld

    concepts = ConceptWorld(1, image_size=16).concepts
    extra = ["café", "東京", "naïve", "Zürich"]
    rng = np.random.default_rng(0)
    glove = tmp_path / "glove.txt"
    glove.write_text(
        "".join(f"{w} " + " ".join(f"{v:.4f}" for v in rng.standard_normal(6)) + "\n" for w in [*concepts, *extra]),
        encoding="utf-8",
    )
    words = tmp_path / "words.txt"
    words.write_text("café\n\n東京\nred\ncafé\nnaïve\nZürich\n", encoding="utf-8")
    model = torchscript_file(tmp_path / "model.pt")
    explainer, result = tmp_path / "explainer.pt", tmp_path / "result.json"
    assert (
        cli.main(
            [
                "train",
                "--model",
                model,
                "--layer",
                "relu",
                "--world",
                "12",
                "--world-image-size",
                "16",
                "--glove",
                str(glove),
                "--epochs",
                "1",
                "--no-progress",
                "--out",
                str(explainer),
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = cli.main(
        [
            "explain",
            "--model",
            model,
            "--explainer",
            str(explainer),
            "--world",
            "6",
            "--world-image-size",
            "16",
            "--glove",
            str(glove),
            "--vocabulary",
            str(words),
            "--words-per-image",
            "5",
            "--num-words",
            "5",
            "--no-progress",
            "--out",
            str(result),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert err.strip().splitlines() == [
        f"lavise-fast explain: warning: word list {str(words)!r}: 1 word(s) repeat and are kept once, at their "
        "first line: 'café' on lines 1, 5"
    ]
    loaded = ExplainResult.load(result)
    assert all(sorted(w) == sorted(["café", "東京", "red", "naïve", "Zürich"]) for w in loaded.words)


def test_an_error_in_a_dataloader_worker_is_still_one_line(capsys, coco_files, tmp_path):
    """``--workers 1``: the missing image is found in a worker process, whose error torch re-raises with
    the worker's traceback in its message; the command still prints one line, the original message."""
    images, annotations, _ = coco_files
    (images / "000000000003.png").unlink()
    glove = tmp_path / "glove.txt"
    glove.write_text("red 1 0 0\ncafé 0 1 0\n", encoding="utf-8")
    explainer = tmp_path / "explainer.pt"
    Explainer(5, 3, layer="relu", space="GloVe(glove.txt)", seen=["red"], unseen=["café"]).save(explainer)
    line = one_line_error(
        capsys,
        "explain",
        "--model",
        torchscript_file(tmp_path / "model.pt"),
        "--explainer",
        str(explainer),
        "--glove",
        str(glove),
        "--vocabulary",
        "explainer",
        "--coco",
        str(images),
        str(annotations),
        "--workers",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "r.json"),
    )
    assert line.startswith("lavise-fast explain: error: image file ") and "000000000003.png' does not exist" in line
    assert "Traceback" not in line and "worker" not in line


# ------------------------------------------------------------------------------------------------ image modes

_RAMP = np.arange(32 * 48, dtype=np.float64).reshape(32, 48) / (32 * 48 - 1)  # 0 .. 1


@pytest.mark.parametrize(("name", "pixels", "expected"), [
    ("grey16.png", (_RAMP * 65535).round().astype(np.uint16), np.rint(np.rint(_RAMP * 65535) / 257)),
    ("grey16.tif", (_RAMP * 65535).round().astype(np.uint16), np.rint(np.rint(_RAMP * 65535) / 257)),
    ("float.tif", _RAMP.astype(np.float32), np.rint(_RAMP.astype(np.float32).astype(np.float64) * 255)),
    ("grey8.png", (_RAMP * 255).round().astype(np.uint8), (_RAMP * 255).round()),
    ("rgb8.png", np.stack([(_RAMP * 255).round().astype(np.uint8)] * 3, -1), (_RAMP * 255).round()),
])
def test_deep_images_are_scaled_to_eight_bits_not_clipped(tmp_path, name, pixels, expected):
    """16-bit and float grey images read as their values scaled to 0..255 (PIL's convert would clip them
    to white), through the folder dataset the command line reads."""
    from lavise_fast.data import ImageFolder, open_rgb

    Image.fromarray(pixels).save(tmp_path / name)
    got = np.asarray(open_rgb(tmp_path / name)).astype(np.float64)
    assert got.shape == (32, 48, 3)
    for channel in range(3):
        np.testing.assert_array_equal(got[:, :, channel], expected)
    item = ImageFolder(tmp_path, resize=None, crop=None)[0]
    assert item.shape == (3, 32, 48) and float(item.std()) > 0.5  # a ramp, not one colour


@pytest.mark.parametrize(("pixels", "problem"), [
    ((_RAMP * 1000).astype(np.float32), r"floating-point pixels from 0 to 1000 .*values in \[0, 1\]"),
    (np.where(_RAMP > 0.5, np.nan, _RAMP).astype(np.float32), r"NaN/infinity"),
    ((_RAMP * 100000).astype(np.int32), r"I pixels from 0 to 100000: .*at most 16 bits"),
])
def test_deep_images_out_of_range_are_refused_naming_the_file(tmp_path, pixels, problem):
    from lavise_fast.data import open_rgb

    Image.fromarray(pixels).save(tmp_path / "deep.tif")
    with pytest.raises(ValueError, match=problem) as caught:
        open_rgb(tmp_path / "deep.tif")
    assert "deep.tif" in str(caught.value) and "cannot be read" not in str(caught.value)
