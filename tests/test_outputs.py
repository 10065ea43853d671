"""What an output path may replace: one policy (lavise_fast.files), in the one writer every output goes
through and in the check every command runs before its work. Table-driven: each kind of path, what
the writer does with it, and what it leaves on disk."""

from __future__ import annotations

import os
import stat
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from lavise_fast import cli
from lavise_fast.files import atomic_write, check_output
from lavise_fast.pooling import pool_reference

# ------------------------------------------------------------------------------------------------ the writer


def _fifo(tmp_path):
    os.mkfifo(tmp_path / "out")
    return tmp_path / "out"


def _link_to_dev_null(tmp_path):
    (tmp_path / "out").symlink_to("/dev/null")
    return tmp_path / "out"


def _hard_linked(tmp_path):
    (tmp_path / "out").write_text("old")
    os.link(tmp_path / "out", tmp_path / "other")
    return tmp_path / "out"


def _folder(tmp_path):
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


def _missing_folder(tmp_path):
    return tmp_path / "nowhere" / "out"


def _file_as_folder(tmp_path):
    (tmp_path / "file").write_text("old")
    return tmp_path / "file" / "out"


REFUSED = [
    (_fifo, OSError, r"it is a FIFO, not a regular file"),
    (lambda tmp_path: __import__("pathlib").Path("/dev/null"), OSError, r"it is a character device"),
    (_link_to_dev_null, OSError, r"it is a character device"),
    (_hard_linked, OSError, r"has 2 hard links"),
    (_folder, IsADirectoryError, r"it is a folder"),
    (_missing_folder, FileNotFoundError, r"the folder '.*nowhere' does not exist"),
    (_file_as_folder, NotADirectoryError, r"'.*file' is a file, not a folder"),
]


@pytest.mark.parametrize(("make", "error", "message"), REFUSED)
def test_the_writer_refuses_what_it_may_not_replace_and_leaves_it_as_it_was(tmp_path, make, error, message):
    path = make(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    kind = os.lstat(path).st_mode if os.path.lexists(path) else None
    for attempt in (lambda: atomic_write(path, b"new"), lambda: check_output(path, "--out")):
        with pytest.raises(error, match=message) as caught:
            attempt()
        assert str(path) in str(caught.value) and ".tmp" not in str(caught.value)  # the user's path, no temporary
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if kind is not None:
        assert os.lstat(path).st_mode == kind  # the node itself untouched
    if make is _hard_linked:
        assert (tmp_path / "other").read_text() == "old"


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    atomic_write(tmp_path / "link.json", b"new")
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "real.json").read_text() == "new"
    (tmp_path / "dangling.json").symlink_to("made.json")  # a link to nothing: the file it names is made
    atomic_write(tmp_path / "dangling.json", b"made")
    assert (tmp_path / "dangling.json").is_symlink() and (tmp_path / "made.json").read_text() == "made"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling.json", "link.json", "made.json", "real.json"]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604])
def test_a_replaced_file_keeps_its_mode(tmp_path, mode):
    path = tmp_path / "result.json"
    path.write_text("old")
    path.chmod(mode)
    atomic_write(path, b"new")
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text() == "new"


@pytest.mark.parametrize("length", [200, 250, 255])
def test_a_long_legal_name_works_and_a_too_long_one_is_refused_up_front(tmp_path, length):
    path = tmp_path / ("r" * (length - 5) + ".json")
    atomic_write(path, b"x")
    assert path.read_text() == "x" and [p.name for p in tmp_path.iterdir()] == [path.name]
    with pytest.raises(OSError, match="its name is 256 bytes, more than the 255"):
        check_output(tmp_path / ("r" * 251 + ".json"), "--out")


def test_an_output_that_is_an_input_is_refused(tmp_path):
    (tmp_path / "e.pt").write_text("precious")
    (tmp_path / "alias.pt").symlink_to("e.pt")
    for given in ("e.pt", "alias.pt"):
        with pytest.raises(ValueError, match=r"--out '.*' is the input --explainer .*would destroy the input"):
            check_output(tmp_path / given, "--out", {"--explainer": str(tmp_path / "e.pt")})
    assert (tmp_path / "e.pt").read_text() == "precious"
    assert check_output(tmp_path / "new.pt", "--out", {"--explainer": str(tmp_path / "e.pt")}) == tmp_path / "new.pt"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_named_before_the_work(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OSError, match=r"the folder '.*ro' is not writable"):
            check_output(folder / "out.json", "--out")
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("0", nn.Conv2d(3, 4, 3, padding=1)), ("1", nn.ReLU())])).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(root / "model.pt"))
    return str(root / "model.pt")


def _refused(capsys, argv, fragment):
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and fragment in err, err
    return err


def test_commands_refuse_to_write_over_their_inputs_before_any_work(capsys, tmp_path, model_file):
    precious = {}
    for name in ("e.pt", "r.json", "a.json", "b.json"):
        (tmp_path / name).write_bytes(f"precious {name}".encode())
        precious[name] = (tmp_path / name).read_bytes()
    e, r, a, b = (str(tmp_path / n) for n in ("e.pt", "r.json", "a.json", "b.json"))
    _refused(capsys, ["explain", "--model", model_file, "--explainer", e, "--world", "2", "--out", e],
             "is the input --explainer")
    _refused(capsys, ["report", "--result", r, "--out", r], "is the input --result")
    _refused(capsys, ["evaluate", "--model", model_file, "--result", r, "--world", "2", "--out", r],
             "is the input --result")
    _refused(capsys, ["compare", a, b, "--table", a], "is the input result a")
    _refused(capsys, ["compare", a, b, "--out", b], "is the input result b")
    _refused(capsys, ["export-onnx", e, "--out", e], "is the input --explainer")
    _refused(capsys, ["train", "--model", model_file, "--layer", "1", "--world", "2", "--out", model_file],
             "is the input --model")
    for name, content in precious.items():
        assert (tmp_path / name).read_bytes() == content


def test_train_refuses_a_feature_cache_over_a_file_it_did_not_write(capsys, tmp_path, model_file):
    unrelated = tmp_path / "notes.npy"
    np.save(unrelated, np.arange(3))
    before = unrelated.read_bytes()
    _refused(capsys, ["train", "--model", model_file, "--layer", "1", "--world", "4", "--world-image-size", "32",
                      "--epochs", "1", "--feature-cache", str(unrelated), "--no-progress", "--out",
                      str(tmp_path / "e.pt")], "is not a pooled-feature cache of lavise_fast")
    assert unrelated.read_bytes() == before and not (tmp_path / "e.pt").exists()


def test_pool_reference_rebuilds_its_own_cache_but_not_another_file(tmp_path):
    from lavise_fast.data import ConceptWorld

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    world = ConceptWorld(3, 32, 0)
    cache = tmp_path / "pooled.npy"
    vectors, labels, _ = pool_reference(model, world, "1", cache=cache, progress=False)
    torch.manual_seed(1)
    other = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()  # another key: its own file, rebuilt
    again, _, _ = pool_reference(other, world, "1", cache=cache, progress=False)
    assert not np.array_equal(np.asarray(vectors), np.asarray(again))
    (tmp_path / "pooled.npy.json").unlink()  # no longer says it is a cache
    with pytest.raises(ValueError, match="not a pooled-feature cache"):
        pool_reference(model, world, "1", cache=cache, progress=False)


def test_several_explainers_check_every_layers_output_before_the_work(capsys, tmp_path, model_file):
    from lavise_fast.explainer import Explainer

    paths = []
    for layer in ("0", "1"):
        explainer = Explainer(4, 384, layer=layer, space="all-MiniLM-L6-v2", seen=["red"], unseen=["sky"])
        explainer.trained = True
        explainer.save(tmp_path / f"e{layer}.pt")
        paths.append(str(tmp_path / f"e{layer}.pt"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "0.json").write_text("old result of layer 0")
    os.mkfifo(out / "1.json")  # layer 1's output cannot be written
    code = cli.main(["explain", "--model", model_file, "--explainer", *paths, "--world", "2", "--world-image-size",
                     "16", "--vocabulary", "explainer", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "1.json" in err and "FIFO" in err, err
    assert (out / "0.json").read_text() == "old result of layer 0"


def test_the_demo_checks_its_outputs_before_the_work(tmp_path, monkeypatch):
    import lavise_fast.demo as demo

    monkeypatch.setattr(demo, "demo_model", lambda *a, **k: pytest.fail("the demo started its work"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="the demo's output folder '.*file' is a file"):
        demo.run_demo(tmp_path / "file", progress=False)
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "out" / "report.html")
    with pytest.raises(OSError, match=r"cannot write the demo's output '.*report.html': it is a FIFO"):
        demo.run_demo(tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html"]
