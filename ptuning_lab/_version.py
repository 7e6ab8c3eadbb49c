"""The package version: the one place it is written (pyproject.toml reads it, so do the CLI and ``__version__``)."""
__version__ = "0.2.0"
