"""explain() against the official algorithm written naively (one filter at a time, batch size
1, the CNN run again for every top image, a full sort of the vocabulary, a weighted vote) on a
small torchvision ResNet with a trained head, for the four methods; and its bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from test_explainer import COLOURS, Patches

from lavise_fast import scoring as scoring_module
from lavise_fast.layers import layer_features
from lavise_fast.result import ExplainResult
from lavise_fast.semantics import Static, Vocabulary
from lavise_fast.sweep import explain
from lavise_fast.training import train_explainer

LAYER = "layer3"


def naive_explain(model, images, expl, vocab, method, filters, P):
    """The official inference loop, per filter: maxima from one pass at batch size 1, the top P
    images run again one by one, the method's pooled vector, the head, every word's cosine.
    Returns per filter the top images, the threshold and the pairs (max activation, cosines [V])."""
    feats = [layer_features(model, LAYER, image[None])[0] for image in images]
    top, thresholds, pairs = [], [], []
    for k in filters:
        t = torch.quantile(torch.stack([f[k].flatten() for f in feats]).flatten(), 0.995).item()
        maxima = [f[k].max().item() for f in feats]
        order = sorted(range(len(images)), key=lambda i: (-maxima[i], i))[:P]
        scored = []
        for i in order:
            if maxima[i] <= 0:  # the official code skips these images
                continue
            A = layer_features(model, LAYER, images[i][None])[0]  # the CNN again
            a = A[k]
            if method == "projection":
                z = (A * (a / a.norm() if a.norm() > 0 else torch.zeros_like(a))).mean((1, 2))
            elif method == "activation":
                z = (A * (a > t)).mean((1, 2))
            elif method == "image":
                up = F.interpolate(a[None, None], size=images[i].shape[-2:], mode="bilinear", align_corners=False)
                masked = images[i] * (up[0, 0] > t)
                z = layer_features(model, LAYER, masked[None])[0].mean((1, 2))
            else:
                z = A.mean((1, 2))
            with torch.no_grad():
                e = expl(z[None])[0]
            scored.append((maxima[i], F.cosine_similarity(e[None], vocab.vectors, dim=1).double()))
        top.append(order)
        thresholds.append(t)
        pairs.append(scored)
    return top, thresholds, pairs


_NAIVE: dict = {}


def naive_words(pairs, vocab, scoring, s, num_words):
    """Each filter's words from its pairs, one word at a time (lavise_fast.scoring written out)."""
    every = torch.stack([sims for scored in pairs for _, sims in scored])
    mean, std = every.mean(0), every.std(0, unbiased=False)
    soft = torch.softmax(every / 0.05, dim=1).mean(0)
    words, scores = [], []
    for scored in pairs:
        votes = {}
        total = sum(weight for weight, _ in scored)
        for v in range(len(vocab.words)):
            if not scored:
                break
            if scoring == "vote":
                vote = sum(weight for weight, sims in scored
                           if v in torch.sort(sims, descending=True, stable=True).indices[:s].tolist())
                if vote:
                    votes[v] = vote
            elif scoring == "centred":
                votes[v] = sum(weight * float(sims[v]) for weight, sims in scored) / total - float(mean[v])
            elif scoring == "zscore":
                votes[v] = sum(weight * float(sims[v] - mean[v]) for weight, sims in scored) / total / float(std[v])
            else:
                p = sum(weight * float(torch.softmax(sims / 0.05, 0)[v]) for weight, sims in scored) / total
                votes[v] = math.log(p) - 0.9 * math.log(float(soft[v]))
        ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:num_words]
        words.append([vocab.words[w] for w, _ in ranked])
        scores.append([value for _, value in ranked])
    return words, scores


def assert_same_words(got_words, got_scores, want_words, want_scores):
    """Equal scores (float32 cosines summed in another order) and equal words wherever two scores
    are not within rounding of each other."""
    for gw, gs, ww, ws in zip(got_words, got_scores, want_words, want_scores, strict=True):
        assert len(gw) == len(ww)
        torch.testing.assert_close(torch.tensor(gs), torch.tensor(ws), rtol=1e-4, atol=1e-5)
        for i, (a, b) in enumerate(zip(gw, ww, strict=True)):
            near = [j for j in range(len(ws)) if abs(ws[j] - ws[i]) < 1e-4]
            assert a == b or b in [gw[j] for j in near], (gw, ww)


def small_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, as in a trained network
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model


@pytest.fixture(scope="module")
def setting():
    g = torch.Generator().manual_seed(1)
    vocab_words = list(COLOURS) + [f"word{i}" for i in range(24)]
    space = Static(vocab_words, torch.randn(len(vocab_words), 16, generator=g), name="test")
    model = small_resnet()
    expl = train_explainer(model, Patches(60), LAYER, space, anno_rate=0.5, epochs=3, progress=False)
    return model, expl, Vocabulary.from_words(vocab_words, space)


@pytest.fixture(scope="module")
def targets():
    g = torch.Generator().manual_seed(5)
    return [torch.randn(3, 48, 48, generator=g) for _ in range(19)]


def batches(images, size=5):
    return [torch.stack(images[i : i + size]) for i in range(0, len(images), size)]  # the last one smaller


@pytest.mark.parametrize(("method", "scoring"), [("projection", "centred"), ("projection", "vote"),
                                                ("projection", "zscore"), ("projection", "pmi"),
                                                ("activation", "centred"), ("image", "vote"), ("original", "zscore")])
def test_explain_equals_the_naive_official_algorithm(setting, targets, method, scoring):
    model, expl, vocab = setting
    filters = torch.randperm(256, generator=torch.Generator().manual_seed(len(method)))[:24].tolist()
    P, s = 4, 3
    res = explain(model, batches(targets), expl, method=method, scoring=scoring, vocabulary=vocab, filters=filters,
                  top_images=P, words_per_image=s, num_words=6, progress=False)
    if method not in _NAIVE:  # the naive loop once per method, for every scoring
        _NAIVE[method] = naive_explain(model, targets, expl, vocab, method, filters, P)
    top, thresholds, pairs = _NAIVE[method]
    words, scores = naive_words(pairs, vocab, scoring, s, 6)
    assert res.filters == filters
    assert res.top_images == top
    assert_same_words(res.words, res.scores, words, scores)
    assert sum(map(len, res.words)) > 0
    assert res.settings["scoring"] == scoring and res.settings["baseline_pairs"] == sum(map(len, pairs))
    torch.testing.assert_close(torch.tensor(res.thresholds), torch.tensor(thresholds), rtol=1e-5, atol=1e-6)
    for scores_k, acts in zip(res.scores, res.top_activations, strict=True):
        assert scores_k == sorted(scores_k, reverse=True) and acts == sorted(acts, reverse=True)
        if scoring == "vote":
            positive = sum(a for a in acts if a > 0)
            assert math.isclose(sum(scores_k), positive * s, rel_tol=1e-5) or len(scores_k) == 6
        else:  # every word has a real score: no ties
            assert len(set(scores_k)) == len(scores_k)


def test_methods_that_rerun_give_the_same_result_from_any_loader_and_with_given_thresholds(setting, targets):
    model, expl, vocab = setting
    data = torch.utils.data.TensorDataset(torch.stack(targets), torch.zeros(len(targets)))
    dataloader = torch.utils.data.DataLoader(data, batch_size=4)  # in order: only the top images are loaded again
    kw = dict(vocabulary=vocab, top_images=3, words_per_image=2, progress=False)
    for method in ("activation", "image"):
        from_list = explain(model, batches(targets), expl, method=method, **kw)
        from_dataloader = explain(model, dataloader, expl, method=method, **kw)
        assert from_list.words == from_dataloader.words and from_list.top_images == from_dataloader.top_images
    one_pass = explain(model, iter(batches(targets)), expl, method="activation", thresholds=from_list.thresholds, **kw)
    rerun = explain(model, batches(targets), expl, method="activation", **kw)
    assert one_pass.words == rerun.words
    assert one_pass.settings["thresholds_given"] and not rerun.settings["thresholds_given"]
    with pytest.raises(ValueError, match="re-iterable"):  # a one-shot generator cannot be re-run
        explain(model, iter(batches(targets)), expl, method="image", **kw)


def test_result_json_round_trip_and_bad_file(setting, tmp_path):
    model, expl, vocab = setting
    loader = [(torch.randn(4, 3, 32, 32), "labels are ignored")]
    res = explain(model, loader, expl, vocabulary=vocab, top_images=2, filters=[3, 1], progress=False)
    assert res.filters == [3, 1] and len(res.words) == 2
    path = tmp_path / "result.json"
    res.save(path)
    assert ExplainResult.load(path) == res
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    path.write_text("{ not json")
    with pytest.raises(ValueError, match="result.json is not an ExplainResult"):
        ExplainResult.load(path)


def test_bad_inputs_are_clear_errors(setting):
    model, expl, vocab = setting
    images = [torch.randn(2, 3, 32, 32)]
    with pytest.raises(ValueError, match="no batch"):
        explain(model, [], expl, vocabulary=vocab, progress=False)
    with pytest.raises(TypeError, match="image batches"):
        explain(model, [["not", "images"]], expl, vocabulary=vocab, progress=False)
    with pytest.raises(TypeError, match="image batches"):
        explain(model, [torch.zeros(2, 32, 32)], expl, vocabulary=vocab, progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        explain(model, images, expl, vocabulary=vocab, method="gradcam", progress=False)
    with pytest.raises(ValueError, match="top_images must be a positive int"):
        explain(model, images, expl, vocabulary=vocab, top_images=0, progress=False)
    with pytest.raises(ValueError, match=r"filters must be indices in \[0, 256\)"):
        explain(model, images, expl, vocabulary=vocab, filters=[256], progress=False)
    with pytest.raises(ValueError, match="one value per filter"):
        explain(model, images, expl, vocabulary=vocab, method="activation", thresholds=[0.0] * 3, progress=False)
    with pytest.raises(ValueError, match="not 'layer4'"):
        explain(model, images, expl, vocabulary=vocab, layer="layer4", progress=False)
    with pytest.raises(ValueError, match="nearest"):
        explain(model, images, expl, vocabulary=vocab, layer="layer9", progress=False)
    wrong = Vocabulary(["a", "b"], torch.randn(2, 5))
    with pytest.raises(ValueError, match="16 dimensions, the vocabulary has 5"):
        explain(model, images, expl, vocabulary=wrong, progress=False)
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))  # another model: its layer has other channels
    other.add_module("layer3", torch.nn.Conv2d(8, 8, 3))
    with pytest.raises(ValueError, match="trained on 256 channels"):
        explain(other, images, expl, vocabulary=vocab, progress=False)


def test_nan_activations_are_ignored_and_reported(setting):
    model, expl, vocab = setting

    def poison(module, inputs, output):  # image 0 all NaN; image 1 NaN in the first row of filter 1
        output = output.clone()
        output[0] = math.nan
        output[1, 1, :1] = math.nan
        return output

    images = [torch.randn(4, 3, 32, 32)]
    handle = model.layer3.register_forward_hook(poison)
    try:
        with pytest.warns(UserWarning) as caught:  # pointing at this call, as the README says
            res = explain(model, images, expl, vocabulary=vocab, top_images=2, scoring="vote", progress=False)
        specific = explain(model, images, expl, vocabulary=vocab, top_images=2, progress=False)
    finally:
        handle.remove()
    messages = " ".join(str(w.message) for w in caught)
    assert {w.filename for w in caught if "NaN" in str(w.message) or "non-finite" in str(w.message)} == {__file__}
    assert "were NaN and were ignored" in messages and "non-finite embedding and were left out" in messages
    assert all(0 not in images for images in res.top_images)  # NaN never enters the top images
    assert all(math.isfinite(t) for t in res.thresholds)
    for images, acts, scores in zip(res.top_images, res.top_activations, res.scores, strict=True):
        # image 1's pooled vectors hold NaN: only the clean images vote
        clean = sum(a for i, a in zip(images, acts, strict=True) if i != 1 and a > 0)
        assert math.isclose(sum(scores), clean * 5, rel_tol=1e-5) or len(scores) == 10
    # The default scoring: every score finite; a filter whose only scored image held NaN has no words.
    for images, acts, scores in zip(specific.top_images, specific.top_activations, specific.scores, strict=True):
        assert all(math.isfinite(v) for v in scores)
        assert bool(scores) == any(i != 1 and a > 0 for i, a in zip(images, acts, strict=True))


def test_a_vocabulary_of_another_space_is_refused(setting):
    model, expl, vocab = setting
    other = Static(vocab.words, torch.randn(len(vocab.words), 16), name="elsewhere")
    with pytest.raises(ValueError, match="space 'elsewhere', the explainer was trained in 'test'"):
        explain(model, [torch.randn(2, 3, 32, 32)], expl, vocabulary=Vocabulary.from_words(vocab.words, other),
                progress=False)


def test_the_two_argument_call_trains_a_default_explainer_once_and_caches_it(monkeypatch):
    """explain(model, loader): an explainer trained on the embedded world in the default space,
    for the model's last 4-D layer, cached (the second call trains nothing), answering with the
    LaViSE entities."""
    import lavise_fast.default_explainers as defaults_module
    from lavise_fast.data import ConceptWorld
    from lavise_fast.vocabularies import entities

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, stride=4), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 24, 3, stride=2), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(24, 5),
    ).eval()
    world = ConceptWorld(size=8, image_size=224, seed=11)
    loader = [torch.stack([world[i][0] for i in range(j, j + 4)]) for j in (0, 4)]
    first = explain(model, loader, top_images=3, progress=False)
    assert first.settings["layer"] == "3" and first.filters == list(range(24))  # not the pooling layer
    known = set(entities())
    assert all(set(words) <= known for words in first.words) and sum(map(len, first.words)) > 0

    def no_training(*args, **kwargs):
        raise AssertionError("the cached default explainer was trained again")

    monkeypatch.setattr(defaults_module, "train_explainer", no_training)
    second = explain(model, loader, top_images=3, progress=False)
    assert second == first
    with pytest.raises(ValueError, match="space 'glove', the explainer was trained in 'all-MiniLM-L6-v2'"):
        explain(model, loader, defaults_module.default_explainer(model, loader),
                vocabulary=Vocabulary(["a", "b"], torch.randn(2, 384), space="glove"), progress=False)


def test_a_layer_that_is_not_a_feature_map_and_a_model_on_another_device_are_refused(setting):
    model, expl, vocab = setting
    images = [torch.randn(2, 3, 32, 32)]
    with pytest.raises(ValueError, match=r"layer 'fc' outputs a 2-D tensor"):
        explain(model, images, layer="fc", progress=False)  # the default explainer's training refuses it
    with pytest.raises(ValueError, match=r"device='cuda' but the model is on 'cpu'"):
        explain(model, images, expl, vocabulary=vocab, device="cuda", progress=False)


def test_a_tiny_memory_budget_gives_the_same_result(setting, targets):
    """Pairs pooled one at a time and the stash scored at every step: the same words as in one go."""
    model, expl, vocab = setting
    kw = dict(vocabulary=vocab, top_images=3, words_per_image=2, filters=list(range(0, 256, 9)), progress=False)
    wide = {m: explain(model, batches(targets), expl, method=m, **kw) for m in ("projection", "activation")}
    for method, expected in wide.items():
        narrow = explain(model, batches(targets), expl, method=method, stash_bytes=4 * 256, **kw)  # one row of z
        assert narrow.words == expected.words and narrow.top_images == expected.top_images
        assert narrow.thresholds == expected.thresholds  # the head's rows in other batches round differently:
        torch.testing.assert_close(narrow.scores, expected.scores, rtol=1e-4, atol=1e-5)  # log-probabilities
    with pytest.raises(ValueError, match="stash_bytes must be a positive int, got 0"):
        explain(model, batches(targets), expl, stash_bytes=0, **kw)


def test_nan_thresholds_are_refused_before_the_pass(setting):
    model, expl, vocab = setting
    images = [torch.randn(2, 3, 32, 32)]
    thresholds = torch.zeros(256)
    thresholds[[3, 7]] = math.nan
    with pytest.raises(ValueError, match=r"thresholds of 'layer3' hold NaN for 2 filter\(s\) \(\[3, 7\]\)"):
        explain(model, images, expl, method="activation", thresholds=thresholds, vocabulary=vocab, progress=False)


@pytest.mark.parametrize("scoring", ["pmi", "vote"])
def test_scores_in_chunks_of_filters_equal_one_chunk(monkeypatch, scoring):
    # pmi and vote go over the pairs in chunks of filters; the chunking must not move a score.
    g = torch.Generator().manual_seed(2)
    embeddings = F.normalize(torch.randn(23, 6, 10, generator=g), dim=2)
    weights = torch.rand(23, 6, generator=g) - 0.2
    words = F.normalize(torch.randn(17, 10, generator=g), dim=1)
    one, base_one = scoring_module.score_layer(embeddings, weights, words, scoring, 3)
    monkeypatch.setattr(scoring_module, "_CHUNK_ELEMENTS", 2 * 6 * 17)  # two filters a chunk: 12 chunks
    chunked, base = scoring_module.score_layer(embeddings, weights, words, scoring, 3)
    torch.testing.assert_close(chunked, one, rtol=1e-12, atol=1e-12)
    if scoring == "pmi":
        torch.testing.assert_close(base.pmi, base_one.pmi, rtol=1e-12, atol=1e-15)


def test_ranked_words_equal_a_naive_stable_ranking():
    # ranked_words sorts only the n best scores of rows without a tie across the n-th (or NaN) and
    # whole rows otherwise: both must give the naive ranking, best first, ties to the smaller index.
    g = torch.Generator().manual_seed(11)
    for trial in range(200):
        K, V = int(torch.randint(0, 7, (), generator=g)), int(torch.randint(1, 25, (), generator=g))
        scores = torch.randint(-3, 4, (K, V), generator=g).double()  # many ties
        scores[torch.rand(K, V, generator=g) < 0.1] = -math.inf
        if trial % 3 == 0:
            scores[torch.rand(K, V, generator=g) < 0.05] = math.nan
        if trial % 2:
            scores = scores + torch.rand(K, V, generator=g) * 1e-3  # few ties
        for n in (1, 3, 40):
            # torch ranks NaN above every number; ranked_words then leaves it (and -inf) out
            naive = [sorted(range(V), key=lambda w, row=row: (not math.isnan(row[w]), -row[w] if not math.isnan(row[w])
                                                                else 0.0, w))[:n] for row in scores.tolist()]
            expected = [[(w, row[w]) for w in ws if math.isfinite(row[w])]
                        for ws, row in zip(naive, scores.tolist(), strict=True)]
            assert scoring_module.ranked_words(scores, n) == expected, (trial, n)
