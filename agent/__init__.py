"""The trio agent: ``overlay-agent`` and ``agentctl``."""

__version__ = "0.2.0"
"""Kept equal to pyproject.toml's version (a test checks); read without importlib.metadata,
which would cost the agent ~1 MiB of RSS."""
