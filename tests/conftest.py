"""Session-wide isolation for every test tier.

Agents keep per-boot secrets (IPsec keys) under ``$RUNTIME_DIRECTORY`` (else
``/run/overlay-agent``, shared by the whole machine). Agents that tests start inherit
a private directory instead, removed when the session ends, so no run leaves files
behind or picks up keys from an earlier one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_runtime_directory() -> Iterator[str]:
    saved = os.environ.get("RUNTIME_DIRECTORY")
    path = tempfile.mkdtemp(prefix="overlay-test-run-")
    os.environ["RUNTIME_DIRECTORY"] = path
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop("RUNTIME_DIRECTORY", None)
        else:
            os.environ["RUNTIME_DIRECTORY"] = saved
        shutil.rmtree(path, ignore_errors=True)
