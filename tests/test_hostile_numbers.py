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
