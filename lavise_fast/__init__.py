"""lavise_fast: make any CNN describe its own filters in words (LaViSE, CVPR 2022),
one streaming pass per layer, on CPU or GPU."""

from lavise_fast import data, layers, ops, semantics, stats, vocabularies
from lavise_fast.evaluate import compare, compare_plot, evaluate
from lavise_fast.explain import ExplainResult, explain
from lavise_fast.explainer import Explainer, csmr_loss
from lavise_fast.onnx import OnnxHead, export_onnx
from lavise_fast.semantics import Vocabulary
from lavise_fast.stats import ChannelQuantiles, TopImages
from lavise_fast.training import train_explainer

__version__ = "0.1.0"
__all__ = [
    "ops",
    "stats",
    "layers",
    "semantics",
    "vocabularies",
    "data",
    "TopImages",
    "ChannelQuantiles",
    "Explainer",
    "csmr_loss",
    "train_explainer",
    "Vocabulary",
    "explain",
    "ExplainResult",
    "evaluate",
    "compare",
    "compare_plot",
    "export_onnx",
    "OnnxHead",
    "__version__",
]
