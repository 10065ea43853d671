"""Numbers from the command line or a file that would allocate, overflow or flood a message: each is
checked where it enters (table-driven), before any list is built or any work starts."""

from __future__ import annotations

import time
import warnings
from collections import OrderedDict

import pytest
import torch
from torch import nn

from lavise_fast import cli
from lavise_fast.explainer import Explainer


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("numbers")
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("0", nn.Conv2d(3, 4, 3, padding=1)), ("1", nn.ReLU())])).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(root / "model.pt"))
    explainer = Explainer(4, 384, layer="1", space="all-MiniLM-L6-v2", seen=["red"], unseen=["sky"])
    explainer.trained = True
    explainer.save(root / "e.pt")
    return {"model": str(root / "model.pt"), "explainer": str(root / "e.pt"), "root": root}


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--filters", "0-100000000000", "filter index 100000000000 is beyond any layer"),
    ("--filters", "5-2", "expected filter indices such as 0-9,12"),
    ("--filters", "-3", "expected filter indices such as 0-9,12"),
    ("--batch-size", "1e20", "expected a positive integer, got '1e20'"),
    ("--top-images", "0", "expected a positive integer"),
    ("--top-images", "1000000000", "top_images must be at most 65,536, got 1,000,000,000"),
])
def test_numbers_are_refused_where_they_enter_and_fast(capsys, files, option, value, message):
    start = time.perf_counter()
    code = cli.main(["explain", "--model", files["model"], "--explainer", files["explainer"], "--world", "2",
                     option, value, "--out", str(files["root"] / "r.json"), "--no-progress"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # argparse prints its usage above
    assert code == 2 and message in last and len(last) < 300, err
    assert time.perf_counter() - start < 10


def test_filters_out_of_range_give_a_short_message(capsys, files):
    code = cli.main(["explain", "--model", files["model"], "--explainer", files["explainer"], "--world", "2",
                     "--world-image-size", "32", "--filters", "0-900", "--vocabulary", "explainer", "--out",
                     str(files["root"] / "r.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "filters must be indices in [0, 4), got 897 outside it (4, 5, 6, 7, 8, ...)" in err, err
    assert len(err) < 300


def test_more_top_images_than_images_are_clamped_to_the_same_result():
    from lavise_fast.semantics import Static, Vocabulary
    from lavise_fast.sweep import explain

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    words = [f"w{i}" for i in range(6)]
    vocabulary = Vocabulary.from_words(words, Static(words, torch.randn(6, 8), name="s"))
    explainer = Explainer(4, 8, layer="1", space="s").eval()
    loader = torch.utils.data.DataLoader(torch.randn(5, 3, 8, 8), batch_size=2)
    big = explain(model, loader, explainer, vocabulary=vocabulary, top_images=60000, progress=False)
    exact = explain(model, loader, explainer, vocabulary=vocabulary, top_images=5, progress=False)
    assert big.settings.top_images == 5 and big.top_images == exact.top_images and big.words == exact.words


# ------------------------------------------------------------------------------------------------ one line


def test_an_error_inside_the_model_is_one_line_naming_the_model_and_the_input(capsys, files, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict([("0", nn.Conv2d(1, 4, 3)), ("1", nn.ReLU())])).eval()  # wants 1 channel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(tmp_path / "grey.pt"))
    code = cli.main(["explain", "--model", str(tmp_path / "grey.pt"), "--explainer", files["explainer"], "--world",
                     "2", "--world-image-size", "32", "--vocabulary", "explainer", "--out", str(tmp_path / "r.json"),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "the model (Sequential) failed on images of shape (2, 3, 32, 32):" in err


@pytest.mark.parametrize("device", ["mps", "meta", "xla"])
def test_devices_without_kernels_are_one_line(capsys, files, device):
    code = cli.main(["explain", "--model", files["model"], "--explainer", files["explainer"], "--world", "2",
                     "--device", device, "--out", str(files["root"] / "r.json"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "runs on cpu or cuda" in err, err


@pytest.mark.parametrize("kind", ["file", "folder-in-a-file"])
def test_an_unusable_cache_folder_is_logged_and_replaced(tmp_path, monkeypatch, caplog, kind):
    from lavise_fast import cache

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("LAVISE_FAST_CACHE", str(tmp_path / "file" / ("" if kind == "file" else "sub")))
    monkeypatch.setattr(cache, "_FALLBACKS", {})
    with caplog.at_level("WARNING", logger="lavise_fast.cache"):
        folder = cache.cache_dir()
        assert cache.cache_dir() == folder  # once per process
    assert folder.is_dir() and (tmp_path / "file").read_text() == "not a folder"
    assert len([r for r in caplog.records if "cannot be used" in r.getMessage()]) == 1
    (folder / "x").write_text("cached")


@pytest.mark.parametrize("method", ["projection", "image"])
def test_an_iterable_dataset_loader_is_read_like_any_loader(method):
    from lavise_fast.semantics import Static, Vocabulary
    from lavise_fast.sweep import explain

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(5):
                yield torch.randn(3, 8, 8, generator=g)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    words = [f"w{i}" for i in range(6)]
    vocabulary = Vocabulary.from_words(words, Static(words, torch.randn(6, 8), name="s"))
    explainer = Explainer(4, 8, layer="1", space="s").eval()
    streamed = explain(model, torch.utils.data.DataLoader(Stream(), batch_size=2), explainer, vocabulary=vocabulary,
                       method=method, top_images=3, progress=False)
    listed = explain(model, list(torch.utils.data.DataLoader(Stream(), batch_size=2)), explainer,
                     vocabulary=vocabulary, method=method, top_images=3, progress=False)
    assert streamed.top_images == listed.top_images and streamed.words == listed.words


def test_a_scripted_model_is_refused_with_what_to_do_instead():
    from lavise_fast.layers import default_layer, layer_features

    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(model)
    with pytest.raises(TypeError, match=r"layer '1' is a TorchScript module .*load_torchscript"):
        layer_features(scripted, "1", torch.randn(1, 3, 8, 8))
    with pytest.raises(TypeError, match=r"is a TorchScript module, whose layers cannot be hooked"):
        default_layer(scripted, torch.randn(1, 3, 8, 8))


def test_ctrl_c_in_the_middle_of_a_sweep_is_one_line_exit_130_and_no_output(capsys, files, monkeypatch):
    import lavise_fast.sweep

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lavise_fast.sweep, "explain", interrupted)
    out = files["root"] / "interrupted.json"
    code = cli.main(["explain", "--model", files["model"], "--explainer", files["explainer"], "--world", "2",
                     "--vocabulary", "explainer", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 130 and err.strip().splitlines() == [
        "lavise-fast explain: interrupted (outputs are written atomically: none is left half-written)"], err
    assert not out.exists()


def test_compare_refuses_words_that_are_a_string_instead_of_counting_letters():
    from lavise_fast import compare
    from lavise_fast.result import ExplainResult

    good = ExplainResult([0, 1], [["red"], ["sky"]], [[1.0], [1.0]], [[0], [1]], [[1.0], [1.0]], [0.0, 0.0],
                         {"layer": "l"})
    bad = ExplainResult([0, 1], ["red", ["sky"]], [[1.0], [1.0]], [[0], [1]], [[1.0], [1.0]], [0.0, 0.0],
                        {"layer": "l"})
    with pytest.raises(ValueError, match=r"result_a \(a\)\.words of filter 0 must be a list of strings, got 'red'"):
        compare(bad, good)
