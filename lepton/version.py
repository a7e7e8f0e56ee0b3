"""Lepton's version: `lepton.__version__`, and what artifact manifests and the compile cache record."""

__version__ = "0.1.0"
