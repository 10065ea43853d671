"""The explainer head, the CSMR loss against a naive loop, and save/load."""

from __future__ import annotations

import pytest
import torch

from lavise_fast.explainer import Explainer, csmr_loss


def naive_csmr(embeddings, targets, words, margin=1.0):
    """Every true word of a row against every other word, averaged over the row's true words."""
    total = 0.0
    for b in range(embeddings.shape[0]):
        sims = [torch.nn.functional.cosine_similarity(embeddings[b], w, dim=0).item() for w in words]
        marked = targets[b].nonzero().flatten().tolist() if targets.dim() == 2 else [int(targets[b])]
        row = 0.0
        for t in marked:
            row += sum(max(0.0, margin - sims[t] + s) for v, s in enumerate(sims) if v not in marked)
        total += row / len(marked)
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
    # A region with two true words: neither is a negative of the other, so an embedding between them
    # costs nothing as long as both beat the third word by the margin.
    both = torch.tensor([[1.0, 0.0, 1.0]]), torch.tensor([[1.0, 0.0, 1.0]])
    assert csmr_loss(both[0], both[1], words, margin=0.7).item() == 0.0
    assert csmr_loss(both[0], torch.tensor([0]), words, margin=0.7).item() > 0.0  # one true word: pushed apart
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
    with pytest.raises(ValueError, match="explainer file .*bad.pt' is not a file written by torch.save"):
        Explainer.load(bad)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="not a lavise_fast explainer"):
        Explainer.load(other)
    good = tmp_path / "good.pt"
    Explainer(4, 2).save(good)
    good.write_bytes(good.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="good.pt' is not a file written by torch.save: .*truncated"):
        Explainer.load(good)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Explainer.load(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------------------------
# Training on a small synthetic reference set

COLOURS = {"red": (1.0, -1.0, -1.0), "green": (-1.0, 1.0, -1.0), "blue": (-1.0, -1.0, 1.0),
           "white": (1.0, 1.0, 1.0), "cyan": (-1.0, 1.0, 1.0), "purple": (1.0, -1.0, 1.0)}


class Patches(torch.utils.data.Dataset):
    """Images of noise with one or two coloured squares; each square is an object named by its colour."""

    def __init__(self, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        names = list(COLOURS)
        for _ in range(size):
            image = torch.randn(3, 32, 32, generator=g) * 0.3
            masks, labels = [], []
            for _ in range(int(torch.randint(1, 3, (), generator=g))):
                name = names[int(torch.randint(0, len(names), (), generator=g))]
                y, x = (int(v) for v in torch.randint(0, 20, (2,), generator=g))
                mask = torch.zeros(32, 32, dtype=torch.bool)
                mask[y : y + 12, x : x + 12] = True
                image[:, mask] = torch.tensor(COLOURS[name])[:, None]
                masks.append(mask)
                labels.append(name)
            self.items.append((image, torch.stack(masks), labels))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def small_cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 48, 3, padding=1), torch.nn.ReLU(),
    ).eval()


@pytest.fixture(scope="module")
def space():
    from lavise_fast.semantics import Static

    g = torch.Generator().manual_seed(1)
    return Static(list(COLOURS), torch.randn(len(COLOURS), 16, generator=g), name="colours")


def test_training_lowers_the_loss_and_ranks_the_right_word_first(space):
    from lavise_fast.pooling import pool_reference
    from lavise_fast.training import train_explainer

    model, data = small_cnn(), Patches(150)
    expl = train_explainer(model, data, "4", space, anno_rate=1.0, epochs=15, seed=0, progress=False)
    assert expl.trained and expl.layer == "4" and expl.channels == 48 and expl.unseen == []
    vectors, labels, _ = pool_reference(model, Patches(60, seed=7), "4", progress=False)
    words = space.encode(expl.seen)
    assert all(len(ws) == 1 for ws in labels)  # one word per patch
    targets = torch.tensor([expl.seen.index(ws[0]) for ws in labels])
    untrained = Explainer(48, 16).eval()
    with torch.no_grad():
        loss_after = csmr_loss(expl(vectors), targets, words).item()
        loss_before = csmr_loss(untrained(vectors), targets, words).item()
        ranked = (torch.nn.functional.normalize(expl(vectors), dim=1) @ words.t()).argmax(1)
    assert loss_after < 0.5 * loss_before
    assert (ranked == targets).float().mean() > 0.9  # fresh images, not the training ones


def test_anno_rate_split_is_seeded(space):
    from lavise_fast.training import train_explainer

    model, data = small_cnn(), Patches(40)
    a = train_explainer(model, data, "4", space, anno_rate=0.5, epochs=1, seed=3, progress=False)
    b = train_explainer(model, data, "4", space, anno_rate=0.5, epochs=1, seed=3, progress=False)
    c = train_explainer(model, data, "4", space, anno_rate=0.5, epochs=1, seed=4, progress=False)
    assert a.seen == b.seen and a.unseen == b.unseen
    assert len(a.seen) == 3 and sorted(a.seen + a.unseen) == sorted(COLOURS)
    assert a.seen != c.seen  # another seed, another split (fixed seeds: deterministic)
    with pytest.raises(ValueError, match="anno_rate"):
        train_explainer(model, data, "4", space, anno_rate=0.0, progress=False)


def test_training_refuses_a_reference_without_objects(space):
    from lavise_fast.training import train_explainer

    empty = [(torch.randn(3, 32, 32), torch.zeros(0, 32, 32, dtype=torch.bool), [])]
    with pytest.raises(ValueError, match="no object"):
        train_explainer(small_cnn(), empty, "4", space, progress=False)


def test_memory_mapped_feature_cache_trains_the_same_head_and_is_reused(space, tmp_path, monkeypatch):
    from lavise_fast.pooling import pool_reference
    from lavise_fast.training import train_explainer

    model, data = small_cnn(), Patches(50)
    cache = tmp_path / "pooled.npy"
    in_memory = train_explainer(model, data, "4", space, epochs=2, seed=1, progress=False)
    mapped = train_explainer(model, data, "4", space, epochs=2, seed=1, feature_cache=cache, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pooled.npy", "pooled.npy.json"]  # no temporary left
    for name, tensor in in_memory.state_dict().items():
        torch.testing.assert_close(mapped.state_dict()[name], tensor, rtol=1e-6, atol=1e-6)
    vectors, labels, _ = pool_reference(model, data, "4", progress=False)

    def no_forward(*args):
        raise AssertionError("the model ran although the cache holds the vectors")

    monkeypatch.setattr(model, "forward", no_forward)
    cached, cached_labels, name = pool_reference(model, data, "4", cache=cache, progress=False)
    assert name == "4" and cached_labels == labels
    assert torch.equal(torch.from_numpy(cached.copy()), vectors)
    monkeypatch.undo()
    (tmp_path / "pooled.npy.json").write_text("{ broken")  # a broken cache is recomputed, not trusted
    again, _, _ = pool_reference(model, data, "4", cache=cache, progress=False)
    assert torch.equal(torch.from_numpy(again.copy()), vectors)


def test_equal_masks_of_one_image_are_one_region_with_all_their_words(space):
    """An object's colour, shape and pattern share a mask in ConceptWorld: pool_reference makes them one
    row labelled with every word (never three rows that the loss would push apart); equal masks of two
    different images stay two rows."""
    from lavise_fast.pooling import pool_reference
    from lavise_fast.training import train_explainer

    g = torch.Generator().manual_seed(4)
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[0, 4:20, 4:20] = True
    mask[1, 16:30, 10:28] = True
    image = torch.randn(3, 32, 32, generator=g)
    items = [(image, torch.stack([mask[0], mask[0], mask[1], mask[0]]), ["red", "blue", "green", "red"]),
             (torch.randn(3, 32, 32, generator=g), mask[:1], ["cyan"])]
    model = small_cnn()
    vectors, labels, _ = pool_reference(model, items, "4", progress=False)
    assert labels == [["red", "blue"], ["green"], ["cyan"]] and vectors.shape[0] == 3
    from lavise_fast.pooling import pool_reference as again

    alone, _, _ = again(model, [(image, mask[:1], ["red"])], "4", progress=False)
    torch.testing.assert_close(vectors[:1], alone)
    expl = train_explainer(model, items * 8, "4", space, seen=["red", "green"], epochs=1, progress=False)
    assert expl.seen == ["green", "red"] and expl.unseen == ["blue", "cyan"]
    with pytest.warns(UserWarning, match=r"1 of the seen words label no reference region .* \['purple'\]"):
        lone = train_explainer(model, items * 8, "4", space, seen=["red", "purple"], epochs=1, progress=False)
    assert lone.seen == ["red"] and lone.unseen == ["blue", "cyan", "green"]
    with pytest.raises(ValueError, match="seen must name at least one word that labels a reference region"):
        train_explainer(model, items, "4", space, seen=["purple"], progress=False)
    with pytest.raises(TypeError, match="seen must be a list of words"):
        train_explainer(model, items, "4", space, seen="red", progress=False)
