"""explain() against the official algorithm written naively: one filter at a time, batch size
1, the CNN run again for every top image, a full sort of the vocabulary, a weighted vote."""

from __future__ import annotations

import math

import pytest
import torch
from test_explainer import COLOURS, Patches, small_cnn

from lavise_fast.explain import ExplainResult, explain
from lavise_fast.explainer import train_explainer
from lavise_fast.layers import layer_features
from lavise_fast.semantics import Static, Vocabulary


def naive_explain(model, images, layer, expl, vocab, P, s, num_words):
    feats = [layer_features(model, layer, image[None])[0] for image in images]
    words, top, thresholds = [], [], []
    for k in range(feats[0].shape[0]):
        maxima = [f[k].max().item() for f in feats]
        order = sorted(range(len(images)), key=lambda i: (-maxima[i], i))[:P]
        votes: dict[int, float] = {}
        for i in order:
            A = layer_features(model, layer, images[i][None])[0]  # the CNN again, as the official code
            a = A[k]
            w = a / a.norm() if a.norm() > 0 else torch.zeros_like(a)
            z = (A * w).mean((1, 2))
            with torch.no_grad():
                e = expl(z[None])[0]
            sims = torch.nn.functional.cosine_similarity(e[None], vocab.vectors, dim=1)
            for word in torch.sort(sims, descending=True, stable=True).indices[:s].tolist():
                votes[word] = votes.get(word, 0.0) + maxima[i]
        ranked = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:num_words]
        words.append([vocab.words[w] for w, _ in ranked])
        top.append(order)
        thresholds.append(torch.quantile(torch.stack([f[k].flatten() for f in feats]).flatten(), 0.995).item())
    return words, top, thresholds


@pytest.fixture(scope="module")
def setting():
    g = torch.Generator().manual_seed(1)
    vocab_words = list(COLOURS) + [f"word{i}" for i in range(24)]
    space = Static(vocab_words, torch.randn(len(vocab_words), 16, generator=g), name="test")
    model = small_cnn()
    expl = train_explainer(model, Patches(60), "4", space, anno_rate=0.5, epochs=3, progress=False)
    return model, expl, Vocabulary.from_words(vocab_words, space)


def test_projection_equals_the_naive_official_algorithm(setting):
    model, expl, vocab = setting
    images = [item[0][:, :12, :12].contiguous() for item in Patches(23, seed=5)]
    loader = [torch.stack(images[i : i + 5]) for i in range(0, len(images), 5)]  # batches of 5, last of 3
    P, s = 4, 3
    res = explain(model, loader, expl, vocabulary=vocab, top_images=P, words_per_image=s, num_words=6, progress=False)
    words, top, thresholds = naive_explain(model, images, "4", expl, vocab, P, s, 6)
    assert res.filters == list(range(48))
    assert res.top_images == top
    assert res.words == words
    torch.testing.assert_close(torch.tensor(res.thresholds), torch.tensor(thresholds), rtol=1e-5, atol=1e-6)
    for scores, acts in zip(res.scores, res.top_activations, strict=True):
        assert scores == sorted(scores, reverse=True) and acts == sorted(acts, reverse=True)
        assert math.isclose(sum(scores), sum(acts) * s, rel_tol=1e-5) or len(scores) == 6


def test_result_json_round_trip_and_bad_file(setting, tmp_path):
    model, expl, vocab = setting
    loader = [(torch.randn(4, 3, 12, 12), "labels are ignored")]
    res = explain(model, loader, expl, vocabulary=vocab, top_images=2, filters=[3, 1], progress=False)
    assert res.filters == [3, 1] and len(res.words) == 2
    path = tmp_path / "result.json"
    res.save(path)
    assert ExplainResult.load(path) == res
    path.write_text("{ not json")
    with pytest.raises(ValueError, match="result.json is not an ExplainResult"):
        ExplainResult.load(path)


def test_bad_loaders_and_arguments(setting):
    model, expl, vocab = setting
    with pytest.raises(ValueError, match="no batch"):
        explain(model, [], expl, vocabulary=vocab, progress=False)
    with pytest.raises(TypeError, match="image batches"):
        explain(model, [["not", "images"]], expl, vocabulary=vocab, progress=False)
    with pytest.raises(NotImplementedError, match="activation"):
        explain(model, [torch.randn(2, 3, 12, 12)], expl, vocabulary=vocab, method="activation", progress=False)
