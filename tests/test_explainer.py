"""The explainer head, the CSMR loss against a naive loop, and save/load."""

from __future__ import annotations

import pytest
import torch

from lavise_fast.explainer import Explainer, csmr_loss


def naive_csmr(embeddings, targets, words, margin=1.0):
    total = 0.0
    for b in range(embeddings.shape[0]):
        sims = [torch.nn.functional.cosine_similarity(embeddings[b], w, dim=0).item() for w in words]
        marked = targets[b].nonzero().flatten().tolist() if targets.dim() == 2 else [int(targets[b])]
        true = sum(sims[v] for v in marked) / len(marked)
        total += sum(max(0.0, margin - true + s) for v, s in enumerate(sims) if v not in marked)
    return total / embeddings.shape[0]


def test_csmr_matches_a_naive_loop():
    emb, words = torch.randn(7, 5), torch.randn(11, 5)
    labels = torch.randint(0, 11, (7,))
    assert csmr_loss(emb, labels, words).item() == pytest.approx(naive_csmr(emb, labels, words), rel=1e-5)
    marks = (torch.rand(7, 11) < 0.3).float()
    marks[torch.arange(7), labels] = 1.0
    assert csmr_loss(emb, marks, words, margin=0.5).item() == pytest.approx(
        naive_csmr(emb, marks, words, margin=0.5), rel=1e-5
    )


def test_csmr_is_zero_only_when_the_word_wins_by_the_margin():
    words = torch.eye(3)
    assert csmr_loss(torch.tensor([[1.0, -1.0, -1.0]]), torch.tensor([0]), words).item() == 0.0
    assert csmr_loss(torch.tensor([[1.0, 0.5, 0.0]]), torch.tensor([0]), words).item() > 0.0
    with pytest.raises(ValueError, match="at least one word"):
        csmr_loss(torch.randn(2, 3), torch.zeros(2, 3), words)


def test_head_shapes_and_refusals():
    expl = Explainer(16, 8, layer="layer4", space="glove")
    assert expl(torch.randn(5, 16)).shape == (5, 8)
    with pytest.raises(ValueError, match=r"pooled vectors \[M, 16\]"):
        expl(torch.randn(5, 15))
    expl.check_compatible("layer4", 16, "glove")
    with pytest.raises(ValueError, match="16 channels"):
        expl.check_compatible("layer4", 32)
    with pytest.raises(ValueError, match="layer 'layer4', not 'layer3'"):
        expl.check_compatible("layer3", 16)
    with pytest.raises(ValueError, match="word space 'glove'"):
        expl.check_compatible("layer4", 16, "minilm")


def test_save_load_round_trips_exactly(tmp_path):
    expl = Explainer(16, 8, layer="layer4", space="glove", seen=["red", "dog"], unseen=["cat"])
    with torch.no_grad():  # make the batch-norm statistics non-trivial
        expl.train()(torch.randn(64, 16) * 3 + 1)
    expl.trained = True
    expl.eval()
    path = tmp_path / "explainer.pt"
    expl.save(path)
    loaded = Explainer.load(path)
    z = torch.randn(9, 16)
    assert torch.equal(loaded(z), expl(z))
    assert (loaded.layer, loaded.space, loaded.seen, loaded.unseen, loaded.trained) == (
        "layer4", "glove", ["red", "dog"], ["cat"], True
    )
    assert [p.name for p in tmp_path.iterdir()] == ["explainer.pt"]  # no temporary file left


def test_load_refuses_what_is_not_an_explainer(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt is not a readable explainer"):
        Explainer.load(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a lavise_fast explainer"):
        Explainer.load(other)
    good = tmp_path / "good.pt"
    Explainer(4, 2).save(good)
    good.write_bytes(good.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="truncated or corrupted"):
        Explainer.load(good)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Explainer.load(tmp_path / "missing.pt")
