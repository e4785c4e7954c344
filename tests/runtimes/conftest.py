"""Fixtures shared by the real-runtime tests (Docker here; CNI/podman modules may add their own).

``lab_factory`` is the netns tier's (tests/netns/conftest.py): labs torn down after the
test, with a check that none of their namespaces survived.
"""

from __future__ import annotations

from tests.netns.conftest import lab_factory

__all__ = ["lab_factory"]
