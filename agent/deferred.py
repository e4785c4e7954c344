"""Defer loading modules that trio imports but the agent rarely uses.

trio imports ``ssl`` (TLS streams) and ``hmac`` (DTLS cookies) when it is imported;
``hashlib`` and ``secrets`` come with them. Loading them maps OpenSSL's libcrypto and
builds their module state: about 5 MiB of resident memory in every agent, for TLS and
DTLS the agent never uses (gossip encryption goes through ``cryptography``, loaded only
once a key or an encrypted network exists). ``idna`` (~1 MiB of tables) serves trio's
resolution of non-ASCII host names; the agent resolves only numeric addresses. ``defer`` puts a placeholder module in
``sys.modules``; the real module is imported on the first attribute access (IPAM's
first hash, for instance) and the placeholder then holds all of its attributes, so
code that kept a reference to the placeholder keeps working.

Only the process entry point (``agent.__main__``) calls this, before trio is imported;
a module that is already loaded is left alone.

``glibc_sonames`` serves the same import: trio asks ``ctypes.util.find_library("pthread")``
to name its worker threads, and on Linux that runs ``ldconfig -p`` in a child process
(fork of the whole interpreter, exec, and parsing the loader cache: ~4-6 ms of the
agent's CPU plus the child's, at every start, in each of 100 agents starting together).
On glibc the answer is fixed by the ABI (the soname ``libpthread.so.0``, which is also
what ``ldconfig`` reports), so it is given without asking.

Owns: ``defer``, the list of modules the daemon defers, and ``glibc_sonames``. Does not:
decide anything else about start-up.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Iterator

AGENT_DEFERRED = ("ssl", "hmac", "hashlib", "secrets", "idna", "tempfile", "shutil", "bz2", "lzma", "unicodedata",
                  "traceback", "base64", "subprocess", "tokenize")
"""What the daemon defers (the first four are what maps libcrypto into an agent; the next
four come with ``ctypes.util``, which trio imports to name its threads, and serve only
its fallbacks when ``ldconfig`` cannot find a library: ~0.5 MiB of code and two
compression libraries; ``unicodedata``, a C extension that attrs imports for
``attrs.make_class`` alone, which neither trio nor the agent calls: ~0.1 MiB;
``traceback``, which logging, trio's thread cache and sortedcontainers import to print
an exception, and ``base64``, which the agent uses for gossip keys and event payloads:
~0.2-0.3 MiB together, loaded on the first such use; ``subprocess``, which trio and
``ctypes.util`` import and the agent needs only for the ``nft`` tool, once the gateway
reconciler runs (the first network): ~0.15 MiB; ``tokenize``, which ``inspect`` and
``linecache`` import (``dataclasses`` imports ``inspect``) to read source files, which
only a printed traceback or ``inspect.getsource`` does: ~0.1 MiB)."""

GLIBC_SONAMES = {"pthread": "libpthread.so.0"}
"""``find_library`` names answered without ``ldconfig`` on glibc (the sonames of its ABI:
since glibc 2.34 ``libpthread.so.0`` is a stub whose symbols resolve into libc, as before)."""

_lock = threading.RLock()
"""Re-entrant: importing one deferred module may read another (secrets -> hmac)."""
_LOADING_DUNDERS = frozenset({"__all__", "__file__"})
"""Module dunders that only the real module can answer (``from m import *``)."""


class _Placeholder(types.ModuleType):
    """Stands in for a module until one of its attributes is read."""

    def __getattr__(self, attr: str) -> object:
        # Only called for attributes the placeholder does not have yet.
        if attr.startswith("__") and attr.endswith("__") and attr not in _LOADING_DUNDERS:
            # Probes by the import system, copy or pickle must not import the module.
            raise AttributeError(attr)
        return getattr(load(self), attr)


def load(module: types.ModuleType) -> types.ModuleType:
    """The real module behind ``module`` (imported now if it is a placeholder)."""
    if not isinstance(module, _Placeholder):
        return module
    name = module.__name__
    with _lock:
        real = sys.modules.get(name)
        if real is module or real is None:
            sys.modules.pop(name, None)
            try:
                real = importlib.import_module(name)
            except BaseException:
                sys.modules[name] = module  # stay deferred; the caller sees the error
                raise
        module.__dict__.update(real.__dict__)
    return real


def defer(*names: str) -> list[str]:
    """Install placeholders for the top-level ``names`` not imported yet; which were."""
    deferred: list[str] = []
    for name in names:
        if "." in name or name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        placeholder = _Placeholder(name)
        placeholder.__spec__ = spec
        sys.modules[name] = placeholder
        deferred.append(name)
    return deferred


def is_deferred(name: str) -> bool:
    """Whether ``name`` is still a placeholder (never used so far)."""
    return isinstance(sys.modules.get(name), _Placeholder)


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc ")  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # not POSIX, or not glibc (musl has no name)
        return False


@contextlib.contextmanager
def glibc_sonames() -> Iterator[None]:
    """Within: ``ctypes.util.find_library`` answers ``GLIBC_SONAMES`` on glibc without
    running ``ldconfig``; other names (and other C libraries) as before. Put back on exit."""
    if not sys.platform.startswith("linux") or not _glibc():
        yield
        return
    import ctypes.util  # trio imports it anyway; its shutil/tempfile stay deferred

    real = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        return GLIBC_SONAMES.get(name) or real(name)

    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = real
