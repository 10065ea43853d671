"""Damaged result, explainer and evaluation files, made by hypothesis: one field of a valid file replaced
by a value of another type, length or range, or removed. Loading gives a clear ValueError/TypeError or a
result that the functions reading it accept or refuse with one; never another exception, and never a
silent count of letters."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lavise_fast import compare
from lavise_fast.evaluation import Evaluation
from lavise_fast.explainer import FORMAT as EXPLAINER_FORMAT
from lavise_fast.explainer import Explainer
from lavise_fast.result import ExplainResult

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=8,
)
CLEAR = (ValueError, TypeError)


def _valid_result() -> dict:
    result = ExplainResult(
        filters=[0, 3], words=[["red", "ball"], ["sky"]], scores=[[0.9, 0.5], [float("-inf")]],
        top_images=[[1, 0], [2]], top_activations=[[3.0, 1.5], [float("nan")]], thresholds=[0.5, float("nan")],
        settings={"layer": "layer4", "images": 3, "seen": ["red"], "unseen": ["sky"]},
        groups=[[{"images": [1, 0], "words": ["red"], "scores": [0.9]}], []])
    return json.loads(json.dumps(result.to_dict(), allow_nan=True))


def _paths(tree, prefix=()):
    """Every path to a value in a JSON tree."""
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _paths(value, (*prefix, i))


@st.composite
def damaged(draw, valid: dict):
    data = copy.deepcopy(valid)
    path = draw(st.sampled_from([p for p in _paths(data) if p and p[0] != "format"]))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.booleans()) and isinstance(parent, (dict, list)):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON_VALUES)
    return data


def test_every_file_lavise_fast_writes_is_strict_json(tmp_path):
    data = _valid_result()
    del data["format"]
    result = ExplainResult(**data)
    assert math.isnan(result.thresholds[1]) and math.isnan(result.top_activations[1][0])
    result.save(tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} in a result file"))
    again = ExplainResult.load(tmp_path / "r.json")
    assert math.isnan(again.thresholds[1]) and again.words == result.words


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=damaged(_valid_result()))
def test_a_damaged_result_file_is_refused_clearly_or_loads_as_a_result(tmp_path, data):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    try:
        result = ExplainResult.load(path)
    except CLEAR:
        return
    assert all(isinstance(w, str) for words in result.words for w in words)
    assert all(isinstance(k, int) for k in result.filters)
    try:
        compare(result, ExplainResult.load(_write(tmp_path / "valid.json", _valid_result())))
    except CLEAR:
        pass


def _valid_evaluation() -> dict:
    recall = {"recall@5": 0.5, "recall@10": 0.75}
    return {**recall, "pairs": 4, "chance": dict(recall), "shuffled": dict(recall), "gain": dict(recall),
            "seen": {**recall, "pairs": 2}, "unseen": {**recall, "pairs": 2}, "rank": {"seen": {"mean": 2.0}},
            "unseen_produced": 0.5, "unseen_words": 2, "iou_threshold": 0.04, "shuffles": 10, "seed": 0,
            "dissection": {"0": {"label": "red", "iou": 0.2}}, "dissection_in_top": {"all": {"1": 0.5}},
            "simulation": {"words": 0.1}}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=damaged(_valid_evaluation()))
def test_a_damaged_evaluation_file_is_refused_clearly_or_loads(tmp_path, data):
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"format": "lavise_fast.evaluation/2", **data}))
    try:
        evaluation = Evaluation.load(path)
    except CLEAR:
        return
    assert isinstance(evaluation, dict) and evaluation.recall


def _valid_explainer_payload() -> dict:
    torch.manual_seed(0)
    explainer = Explainer(4, 3, layer="layer4", space="test", seen=["red"], unseen=["sky"])
    return {"format": EXPLAINER_FORMAT, "config": {
        "channels": 4, "dim": 3, "layer": "layer4", "space": "test", "seen": ["red"], "unseen": ["sky"],
        "dropout": 0.1, "unit_input": False, "trained": True}, "state_dict": explainer.state_dict()}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["channels", "dim", "layer", "space", "seen", "unseen", "dropout", "unit_input",
                            "trained"]),
       value=JSON_VALUES, remove=st.booleans())
def test_a_damaged_explainer_file_is_refused_clearly_or_loads(tmp_path, key, value, remove):
    payload = _valid_explainer_payload()
    if remove:
        del payload["config"][key]
    else:
        payload["config"][key] = value
    torch.save(payload, tmp_path / "e.pt")
    try:
        explainer = Explainer.load(tmp_path / "e.pt")
    except CLEAR:
        return
    assert isinstance(explainer.layer, str) and all(isinstance(w, str) for w in (*explainer.seen, *explainer.unseen))
    assert explainer.channels == 4 and explainer.dim == 3
