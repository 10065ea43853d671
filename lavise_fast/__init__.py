"""lavise_fast: make any CNN describe its own filters in words (LaViSE, CVPR 2022),
one streaming pass per layer, on CPU or GPU."""

from lavise_fast import ops, stats
from lavise_fast.stats import ChannelQuantiles, TopImages

__version__ = "0.1.0"
__all__ = ["ops", "stats", "TopImages", "ChannelQuantiles", "__version__"]
