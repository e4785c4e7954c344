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
a module that is already loaded is left alone. Owns: ``defer`` and the list of modules
the daemon defers. Does not: decide anything else about start-up.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

AGENT_DEFERRED = ("ssl", "hmac", "hashlib", "secrets", "idna", "tempfile", "shutil", "bz2", "lzma")
"""What the daemon defers (the first four are what maps libcrypto into an agent; the last
four come with ``ctypes.util``, which trio imports to name its threads, and serve only
its fallbacks when ``ldconfig`` cannot find a library: ~0.5 MiB of code and two
compression libraries)."""

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
