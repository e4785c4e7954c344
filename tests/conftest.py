"""Session-wide isolation for every test tier, and the hypothesis profiles.

``make test`` (CI) loads the ``ci`` profile: every property and stateful test runs
the same examples on every run, so CI's verdict depends on the code alone.
Exploration with fresh random examples is the ``explore`` profile (the default for a
bare ``pytest``; ``make explore`` runs the pure tiers, slow stateful machine included,
``EXPLORE_ROUNDS`` times with new examples each round); a failure there prints a ``@reproduce_failure`` blob.

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
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "explore"))


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
