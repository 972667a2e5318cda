"""The version of gold-distill (read by pyproject.toml at build time, and by ``gold --version``)."""

__version__ = "0.1.0"
