"""The package's one version: hatch reads it to build, the code imports it (as httpx does)."""

__version__ = "0.2.0"
