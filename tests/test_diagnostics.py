"""What a result's word lists say about themselves (ties, generic words, undecided filters), and the
split of a filter's top images into groups, against naive loops on fresh random inputs."""

from __future__ import annotations

import pytest
import torch

from lavise_fast import groups
from lavise_fast.diagnostics import filter_flags, generic_words, word_statistics
from lavise_fast.groups import silhouette, split_in_two
from lavise_fast.result import ExplainResult


def result_of(words, scores, scoring="pmi", groups=None):
    n = len(words)
    return ExplainResult(list(range(n)), words, scores, [[0]] * n, [[1.0]] * n, [0.0] * n, {"scoring": scoring},
                         groups or [])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_word_statistics_and_flags_equal_a_naive_count(seed):
    g = torch.Generator().manual_seed(seed)
    vocabulary = [f"w{i}" for i in range(30)]
    words, scores = [], []
    for k in range(30):
        order = torch.randperm(30, generator=g).tolist()
        if k % 3 == 0:  # a hub word near the front of a third of the lists, and of every list for seed 2
            order.remove(0)
            order.insert(1, 0)
        if seed == 2:
            order.remove(0)
            order.insert(0, 0)
        listed = [vocabulary[i] for i in order[: 2 + k % 5]]
        values = sorted(torch.randn(len(listed), generator=g).tolist(), reverse=True)
        if k % 7 == 0:
            values[1] = values[0]  # a tie
        words.append(listed)
        scores.append(values)
    result = result_of(words, scores)
    stats = word_statistics(result)
    flags = filter_flags(result)
    counts = {w: sum(w in ws[:5] for ws in words) for w in vocabulary}
    generic = {w: c / 30 for w, c in counts.items() if c / 30 > 0.5}
    assert generic_words(words) == generic
    assert stats["ties"] == sum(s[0] == s[1] for s in scores) / 30
    assert stats["distinct_first"] == len({ws[0] for ws in words})
    best = max(counts.values())
    assert stats["most_shared"] == {"word": min(w for w, c in counts.items() if c == best), "share": best / 30}
    for ws, s, f in zip(words, scores, flags, strict=True):
        assert ("generic" in f) == (ws[0] in generic)
        assert ("undecided" in f) == (s[0] == s[1] or not s[0] > 0)
    assert stats["undecided"] == sum("undecided" in f for f in flags) / 30
    assert (seed == 2) == (generic == {"w0": 1.0}) and (seed == 2) == ("generic" in flags[5])


def test_flags_of_the_vote_and_of_groups():
    voted = result_of([["a", "b"], ["b"], []], [[3.0, 3.0], [2.0], []], scoring="vote")
    assert filter_flags(voted) == [["undecided"], ["generic"], ["undecided"]]  # b: in 2 of 3 lists; a tie
    grouped = result_of([["a", "b"], ["c"]], [[1.0, 0.5], [-0.5]],
                        groups=[[{"images": [0], "words": ["a"], "scores": [1.0]},
                                 {"images": [1], "words": ["b"], "scores": [0.5]}], []])
    assert filter_flags(grouped) == [["polysemantic"], ["undecided"]]  # no word in more than half; c below 0
    assert word_statistics(grouped)["polysemantic"] == 1


def naive_silhouette(x, labels):
    n, total = len(x), 0.0
    for i in range(n):
        own = [j for j in range(n) if j != i and labels[j] == labels[i]]
        other = [j for j in range(n) if labels[j] != labels[i]]
        if not own or not other:
            continue
        a = sum(1 - float(x[i] @ x[j]) for j in own) / len(own)
        b = sum(1 - float(x[i] @ x[j]) for j in other) / len(other)
        total += (b - a) / max(a, b)
    return total / n


@pytest.mark.parametrize("seed", [0, 1])
def test_silhouette_equals_a_naive_loop(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(3, 17, 6, generator=g, dtype=torch.float64), dim=2)
    labels = (torch.rand(3, 17, generator=g) < 0.4).long()
    live = torch.rand(3, 17, generator=g) < 0.8
    got = silhouette(x, labels, live)
    for k in range(3):
        keep = live[k].nonzero().flatten()
        assert float(got[k]) == pytest.approx(naive_silhouette(x[k, keep], labels[k, keep]), rel=1e-9)


def test_two_clear_clusters_split_and_one_cloud_does_not():
    g = torch.Generator().manual_seed(3)
    a, b = torch.nn.functional.normalize(torch.randn(2, 12, generator=g), dim=1)
    two = torch.nn.functional.normalize(torch.cat([a + 0.2 * torch.randn(9, 12, generator=g),
                                                   b + 0.2 * torch.randn(7, 12, generator=g)]), dim=1)
    one = torch.nn.functional.normalize(a + 0.1 * torch.randn(16, 12, generator=g), dim=1)
    weights = torch.rand(3, 16, generator=g) + 0.5
    weights[0, 3] = 0.0  # a slot that does not count
    weights[2, 4:] = 0.0  # four images: too few to split
    labels = split_in_two(torch.stack([two, one, two]), weights, torch.zeros(12))
    assert labels[0, 3] == -1 and set(labels[0].tolist()) == {-1, 0, 1}
    assert len(set(labels[0, :9].tolist()) - {-1}) == 1 and set(labels[0, 9:].tolist()) == {1 - labels[0, 0].item()}
    heavier = 0 if weights[0, :9].sum() > weights[0, 9:].sum() else 1
    assert labels[0, 0].item() == (0 if heavier == 0 else 1)  # 0: the heavier group
    assert labels[1].tolist() == [0] * 16  # one cloud: one group
    assert labels[2].tolist() == [0] * 4 + [-1] * 12
    for k in range(3):  # each filter on its own gives the same labels
        alone = split_in_two(torch.stack([two, one, two])[k : k + 1], weights[k : k + 1], torch.zeros(12))
        assert torch.equal(alone[0], labels[k])


def test_split_in_two_in_chunks_equals_all_at_once(monkeypatch):
    # Filters are split in chunks of at most _CHUNK_ELEMENTS values; the labels are those of one batch.
    g = torch.Generator().manual_seed(5)
    centres = torch.nn.functional.normalize(torch.randn(40, 2, 8, generator=g), dim=2)
    pick = (torch.rand(40, 11, generator=g) < 0.5).long()
    x = centres.gather(1, pick[..., None].expand(-1, -1, 8)) + 0.3 * torch.randn(40, 11, 8, generator=g)
    x = torch.nn.functional.normalize(x, dim=2)
    weights = torch.rand(40, 11, generator=g) - 0.1
    whole = split_in_two(x, weights, torch.zeros(8))
    assert (whole == 1).any() and (whole == -1).any()
    monkeypatch.setattr(groups, "_CHUNK_ELEMENTS", 3 * 11 * 8)  # three filters a chunk: 14 chunks
    assert torch.equal(split_in_two(x, weights, torch.zeros(8)), whole)
