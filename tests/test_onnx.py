"""ONNX export of the explainer head (vocabulary-free and vocabulary-fused) against PyTorch and
``ops.cosine_topk``, the file's metadata and refusals, and explain(head="onnx") against the torch head."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import sweep_setup as setup
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import lavise_fast  # noqa: E402
from lavise_fast import ops  # noqa: E402
from lavise_fast.explainer import Explainer  # noqa: E402
from lavise_fast.onnx import OnnxHead, export_onnx  # noqa: E402
from lavise_fast.semantics import Static, Vocabulary  # noqa: E402
from lavise_fast.sweep import explain  # noqa: E402

C, D, LAYER = 24, 12, "top"
WORDS = [f"word{i}" for i in range(30)]


def trained_explainer() -> Explainer:
    """An explainer with non-trivial weights and batch-norm statistics, marked as trained."""
    torch.manual_seed(3)
    expl = setup.random_batch_norm(Explainer(C, D, layer=LAYER, space="test", seen=WORDS[:20], unseen=WORDS[20:]))
    expl.trained = True
    return expl.eval()


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
        self.top = torch.nn.Conv2d(8, C, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.body(x)).mean((2, 3))


@pytest.fixture(scope="module")
def expl() -> Explainer:
    return trained_explainer()


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    g = torch.Generator().manual_seed(7)
    return Vocabulary.from_words(WORDS, Static(WORDS, torch.randn(len(WORDS), D, generator=g), name="test"))


@pytest.fixture(scope="module")
def exported(expl, vocab, tmp_path_factory):
    """(vocabulary-free path, fused path with top_k=5), exported once for the module."""
    folder = tmp_path_factory.mktemp("onnx")
    return export_onnx(expl, folder / "head.onnx"), export_onnx(expl, folder / "fused.onnx", vocabulary=vocab)


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_vocabulary_free_export_equals_pytorch(expl, exported, batch):
    head = OnnxHead(exported[0])
    z = torch.randn(batch, C) * 2 + 0.5
    out = head(z)
    with torch.no_grad():
        expected = expl(z)
    assert out.shape == (batch, D) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 7, 256])
def test_fused_export_equals_cosine_topk(expl, vocab, exported, batch):
    head = OnnxHead(exported[1])
    z = torch.randn(batch, C) * 2 + 0.5
    scores, indices = head(z)
    with torch.no_grad():
        expected_scores, expected_indices = ops.cosine_topk(expl(z), vocab.vectors, 5)
    assert indices.dtype == torch.int64 and indices.shape == (batch, 5)
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_graph_passes_the_checker_with_a_dynamic_batch_axis(exported):
    for path, outputs in zip(exported, (["embedding"], ["scores", "indices"]), strict=True):
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        (pooled,) = model.graph.input
        dims = pooled.type.tensor_type.shape.dim
        assert pooled.name == "pooled" and pooled.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert dims[0].dim_param and not dims[0].dim_value and dims[1].dim_value == C
        assert [o.name for o in model.graph.output] == outputs
        assert all(o.type.tensor_type.shape.dim[0].dim_param for o in model.graph.output)


def test_metadata_round_trips(expl, vocab, exported):
    free, fused = OnnxHead(exported[0]), OnnxHead(exported[1])
    for head in (free, fused):
        found = (head.layer, head.channels, head.dim, head.space, head.seen, head.unseen)
        assert found == (LAYER, C, D, "test", 20, 10)
        assert head.metadata["lavise_fast"] == lavise_fast.__version__
        assert head.providers == ["CPUExecutionProvider"] or torch.cuda.is_available()
    assert not free.fused and free.words is None and free.top_k is None
    assert fused.fused and fused.words == vocab.words and fused.top_k == 5
    props = {p.key: p.value for p in onnx.load(exported[1]).metadata_props}
    assert json.loads(props["lavise_fast.words"]) == vocab.words and props["lavise_fast.channels"] == str(C)


def test_export_is_atomic_and_leaves_the_explainer_as_it_was(expl, vocab, tmp_path):
    expl.train()
    try:
        path = tmp_path / "head.onnx"
        path.write_bytes(b"an older file")
        assert export_onnx(expl, path, vocabulary=vocab, top_k=len(WORDS)) == path
        assert expl.training
    finally:
        expl.eval()
    assert [p.name for p in tmp_path.iterdir()] == ["head.onnx"]  # replaced, no temporary file left
    head = OnnxHead(path)
    z = torch.randn(5, C)
    with torch.no_grad():  # exported in eval mode although the explainer was training
        expected = ops.cosine_topk(expl(z), vocab.vectors, len(WORDS))
    scores, indices = head(z)
    assert torch.equal(indices, expected[1])
    torch.testing.assert_close(scores, expected[0], rtol=1e-5, atol=1e-5)


def test_refusals_of_export(expl, vocab, tmp_path):
    untrained = Explainer(C, D, layer=LAYER)
    with pytest.raises(ValueError, match=r"never trained; train_explainer\(...\) or Explainer.load\(...\) first"):
        export_onnx(untrained, tmp_path / "x.onnx")
    other = Vocabulary(WORDS, torch.randn(len(WORDS), D + 1))
    with pytest.raises(ValueError, match=f"embeds into {D} dimensions, the vocabulary has {D + 1}"):
        export_onnx(expl, tmp_path / "x.onnx", vocabulary=other)
    with pytest.raises(ValueError, match="word space 'glove'"):
        export_onnx(expl, tmp_path / "x.onnx", vocabulary=Vocabulary(WORDS, vocab.vectors, space="glove"))
    for k in (0, len(WORDS) + 1):
        with pytest.raises(ValueError, match=r"top_k must be an int in \[1, 30\]"):
            export_onnx(expl, tmp_path / "x.onnx", vocabulary=vocab, top_k=k)
    with pytest.raises(TypeError, match="lavise_fast.Explainer"):
        export_onnx(torch.nn.Linear(C, D), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_wrong_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        OnnxHead(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="bad.onnx is not a readable ONNX model"):
        OnnxHead(bad)
    h = onnx.helper
    graph = h.make_graph([h.make_node("Identity", ["x"], ["y"])], "g",
                         [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 3])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 3])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), foreign)
    with pytest.raises(ValueError, match="foreign.onnx is not a lavise_fast ONNX head"):
        OnnxHead(foreign)


def test_head_inputs_empty_batches_and_non_finite_rows(exported):
    free, fused = OnnxHead(exported[0]), OnnxHead(exported[1])
    with pytest.raises(ValueError, match=rf"pooled vectors \[M, {C}\], got \(3, {C + 1}\)"):
        free(torch.randn(3, C + 1))
    assert free(torch.empty(0, C)).shape == (0, D)
    scores, indices = fused(torch.empty(0, C))
    assert scores.shape == indices.shape == (0, 5) and indices.dtype == torch.int64
    z = torch.randn(3, C, dtype=torch.float64)  # cast to float32
    z[1, 4] = float("nan")
    scores, _ = fused(z)
    assert torch.isfinite(scores).all(1).tolist() == [True, False, True]  # what explain counts as non-finite


def test_missing_onnxruntime_names_the_pip_command(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'lavise_fast\[onnx\]'"):
        OnnxHead(exported[0])


@pytest.mark.cuda
def test_head_returns_on_the_device_of_its_input(expl, exported):
    head = OnnxHead(exported[0])
    z = torch.randn(7, C, device="cuda")
    out = head(z)
    assert out.device == z.device
    with torch.no_grad():
        torch.testing.assert_close(out, copy.deepcopy(expl).to("cuda")(z), rtol=1e-5, atol=1e-5)


def test_explain_with_the_onnx_head_equals_the_torch_head(expl, vocab, exported):
    model = TinyCNN().eval()
    g = torch.Generator().manual_seed(11)
    loader = [torch.randn(6, 3, 16, 16, generator=g) for _ in range(4)]
    kw = dict(vocabulary=vocab, top_images=4, words_per_image=3, num_words=6, progress=False)
    reference = explain(model, loader, expl, **kw)
    assert sum(map(len, reference.words)) > 0
    for head in ("onnx", OnnxHead(exported[0])):  # exported on the fly, or given (vocabulary-free)
        res = explain(model, loader, expl, head=head, **kw)
        assert res.words == reference.words and res.top_images == reference.top_images
        for a, b in zip(res.scores, reference.scores, strict=True):  # log-probabilities of cosines / 0.05
            assert a == pytest.approx(b, rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError, match="head must be 'torch', 'onnx'"):
        explain(model, loader, expl, head="tensorrt", **kw)
    with pytest.raises(ValueError, match="fused with a vocabulary .* export the head without vocabulary="):
        explain(model, loader, expl, head=OnnxHead(exported[1]), **kw)
