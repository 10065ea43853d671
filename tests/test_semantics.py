"""Word spaces: Static, the GloVe/word2vec reader and its cache, Vocabulary."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from lavise_fast import semantics
from lavise_fast.semantics import GloVe, Static, Vocabulary


def random_table(words, dim=6):
    return torch.randn(len(words), dim)


def write_glove(path, words, vectors, header=False):
    lines = [f"{len(words)} {vectors.shape[1]}"] if header else []
    lines += [w + " " + " ".join(f"{v:.6f}" for v in row) for w, row in zip(words, vectors.tolist(), strict=True)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_static_encodes_unit_rows_and_phrases():
    words = ["red", "circle", "traffic", "light"]
    table = random_table(words)
    space = Static(words, table)
    out = space.encode(["circle", "red"])
    torch.testing.assert_close(out, torch.nn.functional.normalize(table[[1, 0]], dim=1))
    phrase = space.encode(["traffic light"])[0]
    want = torch.nn.functional.normalize(torch.nn.functional.normalize(table[2:4], dim=1).mean(0), dim=0)
    torch.testing.assert_close(phrase, want)
    assert space.dim == 6 and "traffic_light" in space and "blue" not in space
    with pytest.raises(KeyError, match="blue"):
        space.encode(["red", "blue"])


def test_static_keeps_the_first_of_duplicate_words_and_checks_shapes():
    table = random_table(["a", "b", "a"])
    space = Static(["a", "b", "a"], table)
    torch.testing.assert_close(space.encode(["a"])[0], torch.nn.functional.normalize(table[0], dim=0))
    with pytest.raises(ValueError, match="vectors must have shape"):
        Static(["a"], table)
    with pytest.raises(ValueError, match="finite"):
        Static(["a"], torch.tensor([[float("nan"), 1.0]]))


@pytest.mark.parametrize("header", [False, True])
def test_glove_reads_both_layouts_and_caches(tmp_path, header, monkeypatch):
    words = [f"w{i}" for i in range(20)] + ["ünïcode"]
    vectors = np.random.default_rng(0).standard_normal((len(words), 5)).astype(np.float32)
    path = tmp_path / "vectors.txt"
    write_glove(path, words, vectors, header=header)
    space = GloVe(path)
    expected = torch.nn.functional.normalize(torch.from_numpy(vectors).round(decimals=6), dim=1)
    torch.testing.assert_close(space.encode(words), expected, atol=1e-5, rtol=0)
    cached = sorted(p.name for p in tmp_path.iterdir() if p.name != "vectors.txt")
    assert len(cached) == 2 and all(p.startswith("vectors.txt.") for p in cached)
    # The second load reads the cache and never parses the text again.
    monkeypatch.setattr(semantics, "read_word_vectors", lambda path: pytest.fail("parsed twice"))
    torch.testing.assert_close(GloVe(path).encode(words), space.encode(words))


def test_glove_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("a 1 2 3\nb 1 2\nc 1 2 3\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected a word and 3 numbers"):
        GloVe(path)
    path.write_text("a 1 2 3\nb 1 x 3\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: .*non-number"):
        GloVe(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]  # nothing half-written


def test_glove_duplicate_word_keeps_the_first(tmp_path, caplog):
    path = tmp_path / "dup.txt"
    path.write_text("a 1 0\nb 0 1\na 0 1\n")
    with caplog.at_level(logging.WARNING):
        space = GloVe(path, cache=False)
    torch.testing.assert_close(space.encode(["a"]), torch.tensor([[1.0, 0.0]]))
    assert "1 duplicate word" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.txt"]  # cache=False writes nothing


def test_glove_missing_or_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        GloVe(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no word vectors"):
        GloVe(tmp_path / "empty.txt")


def test_vocabulary_skips_and_reports_unknown_words(caplog):
    space = Static(["red", "green", "circle"], random_table(["red", "green", "circle"]))
    with caplog.at_level(logging.WARNING):
        vocab = Vocabulary.from_words(["red", "blue", "circle", "red", " ", "square"], space)
    assert vocab.words == ["red", "circle"]
    torch.testing.assert_close(vocab.vectors, space.encode(["red", "circle"]))
    torch.testing.assert_close(vocab.vectors.norm(dim=1), torch.ones(2))
    assert "2 of 4 words are not in the space" in caplog.text
    with pytest.raises(ValueError, match="none of the 2 words"):
        Vocabulary.from_words(["blue", "square"], space)
