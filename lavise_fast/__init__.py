"""lavise_fast: make any CNN describe its own filters in words (LaViSE, CVPR 2022),
one streaming pass per layer, on CPU or GPU.

This file only hands names on. The house, top floor first (each module imports only the ones
below it; ``lint-imports`` checks it, see ``[tool.importlinter]`` in pyproject.toml):

- ``cli`` (the ``lavise-fast`` command), then ``demo``;
- ``report`` (the HTML page, a package), ``bias`` (compare two results), ``models`` (models by name);
- ``evaluation`` (recall, Network Dissection, simulation) and ``sweep`` (``explain``: the one pass);
- ``default_explainers``, ``onnx`` (the head as ONNX), ``checkpoint``, ``sweep_state``, ``groups``,
  ``diagnostics``, ``result`` (``ExplainResult`` and its settings);
- ``training`` (``train_explainer``), then ``pooling`` (reference features and their cache),
  ``explainer`` (the head), ``scoring``, ``stats``;
- ``distributed``, ``semantics`` (word spaces), ``data`` (datasets), ``layers`` (forward hooks);
- ``loaders``, ``vocabularies``, ``ops`` (the compiled kernels, loaded lazily), ``merges``,
  ``cache``, ``hashing``, ``validate``, ``files``; ``errors`` at the bottom.
"""

from lavise_fast import data, layers, ops, report, semantics, stats, vocabularies
from lavise_fast.bias import compare, compare_plot
from lavise_fast.evaluation import Evaluation, evaluate
from lavise_fast.explainer import Explainer, csmr_loss
from lavise_fast.onnx import OnnxHead, export_onnx
from lavise_fast.result import ExplainResult, SweepSettings
from lavise_fast.semantics import Vocabulary
from lavise_fast.stats import ChannelQuantiles, TopImages
from lavise_fast.sweep import explain
from lavise_fast.training import train_explainer
from lavise_fast.version import __version__

__all__ = [
    "ops",
    "stats",
    "layers",
    "semantics",
    "vocabularies",
    "data",
    "report",
    "TopImages",
    "ChannelQuantiles",
    "Explainer",
    "csmr_loss",
    "train_explainer",
    "Vocabulary",
    "explain",
    "ExplainResult",
    "SweepSettings",
    "evaluate",
    "Evaluation",
    "compare",
    "compare_plot",
    "export_onnx",
    "OnnxHead",
    "__version__",
]
