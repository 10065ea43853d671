"""ONNX export of a trained explainer head (optionally fused with vocabulary scoring) and an onnxruntime runner.

Two kinds of model, both with the input ``pooled`` [batch, C] float32 (dynamic batch axis):

- vocabulary-free: the output ``embedding`` [batch, D] = ``explainer(pooled)``;
- vocabulary-fused: the outputs ``scores`` [batch, k] float32 and ``indices`` [batch, k] int64,
  the k best words by cosine similarity of the unit-normalised embedding against the unit
  word matrix (a constant of the graph), descending, as :func:`lavise_fast.ops.cosine_topk`.

The head is exported in eval mode (BatchNorm running statistics, no dropout) with the
``torch.onnx`` exporter (``dynamo=True``, which needs ``onnxscript``) at opset 18, checked with
``onnx.checker`` and written atomically. What it was made from (layer, channels, dim, space,
the counts of seen and unseen words, the vocabulary's words when fused, the lavise_fast
version) is kept in the model's ``metadata_props``, which :class:`OnnxHead` reads back.

Ties: ONNX ``TopK`` puts the smaller index first among equal values, as ``cosine_topk`` does;
both compute the similarities in float32 in their own order of operations, so two words whose
similarities differ by about 1e-7 may come out in either order.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lavise_fast.errors import InputError, InputTypeError, MissingInputError, MissingPackageError
from lavise_fast.explainer import Explainer
from lavise_fast.files import atomic_write
from lavise_fast.semantics import Vocabulary
from lavise_fast.version import __version__

__all__ = ["export_onnx", "OnnxHead", "FORMAT"]

FORMAT = "lavise_fast.onnx_head/1"
DEFAULT_OPSET = 18
_INSTALL = "pip install 'lavise_fast[onnx]'"


def _require(module: str, purpose: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingPackageError(f"{purpose} needs the {module!r} package: {_INSTALL} "
                          f"(or pip install onnx onnxscript onnxruntime)") from error


class _Embed(nn.Module):
    """pooled [B, C] -> embedding [B, D]."""

    def __init__(self, explainer: Explainer) -> None:
        super().__init__()
        self.explainer = explainer

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.explainer(pooled)


class _Fused(nn.Module):
    """pooled [B, C] -> (scores [B, k], indices [B, k]): the k best rows of ``words`` [V, D] (unit
    rows) by cosine similarity with the embedding, descending."""

    def __init__(self, explainer: Explainer, words: torch.Tensor, k: int) -> None:
        super().__init__()
        self.explainer, self.k = explainer, k
        self.register_buffer("words", words)

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.explainer(pooled)
        unit = embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return torch.topk(unit @ self.words.t(), self.k, dim=1, largest=True, sorted=True)


def export_onnx(
    explainer: Explainer,
    path: str | os.PathLike,
    *,
    vocabulary: Vocabulary | None = None,
    top_k: int = 5,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Writes the trained ``explainer`` to the ONNX file ``path`` and returns ``path``.

    Without ``vocabulary`` the model maps ``pooled`` [batch, C] to ``embedding`` [batch, D]; with
    one (a :class:`lavise_fast.Vocabulary` in the explainer's space) it outputs ``scores`` and
    ``indices`` [batch, top_k] of the vocabulary's words (module docstring). The batch axis is
    dynamic. The explainer itself is left as it was (a CPU copy is exported, in eval mode).

    ``opset`` defaults to 18, the lowest the exporter of torch 2.x writes directly; a lower one
    goes through onnx's version converter and stays at 18 if that fails (the exporter warns).

    Raises ValueError for an explainer that was never trained, a vocabulary of another dimension
    or space, or ``top_k`` outside [1, len(vocabulary)]; ImportError naming the pip command when
    ``onnx``/``onnxscript`` are missing.

    Args:
        explainer: the trained explainer head (C = its ``channels``, D = its ``dim``).
        path: the ONNX file to write (atomically).
        vocabulary: the words to fuse into the graph (their unit vectors [V, D] become a constant);
            None: a vocabulary-free model.
        top_k: fused models only: how many words per row, in [1, V].
        opset: the ONNX opset to write (default 18).
    """
    if not isinstance(explainer, Explainer):
        raise InputTypeError(f"explainer must be a lavise_fast.Explainer, got {type(explainer).__name__}")
    if not explainer.trained:
        raise InputError("this explainer was never trained; train_explainer(...) or Explainer.load(...) first")
    if vocabulary is not None:
        explainer.check_vocabulary(vocabulary)  # dimension and space
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(vocabulary.words):
            raise InputError(f"top_k must be an int in [1, {len(vocabulary.words)}] (the vocabulary's size), "
                             f"got {top_k!r}")
    onnx = _require("onnx", "export_onnx")
    _require("onnxscript", "export_onnx (torch.onnx.export(..., dynamo=True))")
    path = Path(path)

    head = copy.deepcopy(explainer).cpu().eval()
    sample = torch.randn(2, explainer.channels)  # a batch of 2: torch.export specialises on 0 and 1
    if vocabulary is None:
        module, outputs = _Embed(head), ["embedding"]
    else:
        words = F.normalize(vocabulary.vectors.detach().float().cpu(), dim=1).contiguous()
        module, outputs = _Fused(head, words, top_k), ["scores", "indices"]
    with torch.no_grad():
        program = torch.onnx.export(
            module.eval(), (sample,), dynamo=True, opset_version=opset, input_names=["pooled"],
            output_names=outputs, dynamic_shapes={"pooled": {0: torch.export.Dim("batch")}}, verbose=False,
        )
    model = program.model_proto

    meta = {
        "format": FORMAT, "layer": explainer.layer, "channels": str(explainer.channels), "dim": str(explainer.dim),
        "space": explainer.space, "seen": str(len(explainer.seen)), "unseen": str(len(explainer.unseen)),
        "fused": "1" if vocabulary is not None else "0", "lavise_fast": __version__,
    }
    if vocabulary is not None:
        meta.update(top_k=str(top_k), words=json.dumps(list(vocabulary.words), ensure_ascii=False))
    onnx.helper.set_model_props(model, {f"lavise_fast.{k}": v for k, v in meta.items()})
    model.producer_name, model.producer_version = "lavise_fast", __version__
    if model.ByteSize() >= 2**31:
        raise InputError(f"the exported head is {model.ByteSize() / 2**30:.1f} GiB, over protobuf's 2 GiB limit for "
                         "one ONNX file: export a smaller vocabulary (or none)")
    onnx.checker.check_model(model, full_check=True)

    return atomic_write(path, model.SerializeToString())


def default_providers() -> list[str]:
    """CUDAExecutionProvider then CPU when onnxruntime has it (onnxruntime-gpu, extra ``[gpu]``) and
    torch sees a GPU; else CPUExecutionProvider."""
    ort = _require("onnxruntime", "OnnxHead")
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxHead:
    """Runs a head written by :func:`export_onnx` in onnxruntime.

    ``head(pooled)`` takes pooled vectors [M, C] (a tensor on any device, cast to float32) and
    returns, on the same device, the embeddings [M, D] of a vocabulary-free model, or
    ``(scores [M, k] float32, indices [M, k] int64)`` of a fused one.

    Attributes: ``path``, ``channels``, ``dim``, ``layer``, ``space``, ``seen`` and ``unseen`` (counts),
    ``fused``, ``top_k`` and ``words`` (fused models; None otherwise), ``providers`` (in use),
    ``metadata`` (all of the file's lavise_fast metadata, as strings).

    Args:
        path: an ONNX file written by :func:`export_onnx`.
        providers: onnxruntime execution providers, in order of preference; None: :func:`default_providers`.
    """

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None) -> None:
        ort = _require("onnxruntime", "OnnxHead")
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingInputError(f"ONNX head file {str(self.path)!r} does not exist")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=list(providers or default_providers()))
        except Exception as error:
            raise InputError(f"{self.path} is not a readable ONNX model (truncated or corrupted?): {error}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = {k[len("lavise_fast."):]: v for k, v in props.items() if k.startswith("lavise_fast.")}
        if self.metadata.get("format") != FORMAT:
            raise InputError(f"{self.path} is not a lavise_fast ONNX head (no metadata of format {FORMAT!r}; "
                             "write one with lavise_fast.export_onnx)")
        try:
            m = self.metadata
            self.layer, self.space = m["layer"], m["space"]
            self.channels, self.dim = int(m["channels"]), int(m["dim"])
            self.seen, self.unseen = int(m["seen"]), int(m["unseen"])
            self.fused = m["fused"] == "1"
            self.top_k = int(m["top_k"]) if self.fused else None
            self.words = list(json.loads(m["words"])) if self.fused else None
        except (KeyError, ValueError) as error:
            raise InputError(f"{self.path} has incomplete lavise_fast metadata: {error!r}") from None
        self.outputs = ["scores", "indices"] if self.fused else ["embedding"]
        names = [o.name for o in self.session.get_outputs()]
        if names != self.outputs or [i.name for i in self.session.get_inputs()] != ["pooled"]:
            raise InputError(f"{self.path} does not have the input 'pooled' and the outputs {self.outputs} "
                             f"(found {names})")
        self.providers = self.session.get_providers()

    def __repr__(self) -> str:
        kind = f"fused with {len(self.words)} words, top_k={self.top_k}" if self.fused else "vocabulary-free"
        return (f"OnnxHead({str(self.path)!r}, layer={self.layer!r}, channels={self.channels}, dim={self.dim}, "
                f"{kind}, providers={self.providers})")

    def __call__(self, pooled: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The head's output for ``pooled``, on its device (see the class docstring).

        Args:
            pooled: pooled vectors [M, C], any device and float dtype (run as float32 on the CPU side).
        """
        if not torch.is_tensor(pooled) or pooled.dim() != 2 or pooled.shape[1] != self.channels:
            found = tuple(pooled.shape) if torch.is_tensor(pooled) else type(pooled).__name__
            raise InputError(f"the ONNX head of layer {self.layer!r} ({self.path.name}) takes pooled vectors "
                             f"[M, {self.channels}], got {found}")
        device = pooled.device
        if pooled.shape[0] == 0:
            if self.fused:
                return (torch.empty(0, self.top_k, device=device),
                        torch.empty(0, self.top_k, dtype=torch.long, device=device))
            return torch.empty(0, self.dim, device=device)
        x = pooled.detach().to("cpu", torch.float32).contiguous().numpy()
        results = [torch.from_numpy(r).to(device) for r in self.session.run(self.outputs, {"pooled": x})]
        return tuple(results) if self.fused else results[0]
