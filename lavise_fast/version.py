"""The version of lavise_fast (``lavise_fast.__version__``; written into the files it exports)."""

__version__ = "0.1.0"
