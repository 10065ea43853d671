"""Re-implementations of other methods' schemes, for measurement only (never used by lavise_fast)."""
