"""Compiled dataclass (and attrs) methods kept on disk, like ``.pyc`` files, to cut the
agent's start-up CPU.

Why: ``@dataclass`` writes the source of ``__init__``, ``__repr__``, ``__eq__``,
``__hash__`` and (frozen) ``__setattr__``/``__delattr__`` for each class and compiles it
at import time. The agent defines ~140 dataclasses; compiling their ~740 generated
functions was ~0.055 CPU-s of a ~0.19 CPU-s start (measured: ``compile`` of
``dataclasses``' generated text under ``time.thread_time``, docs/performance.md, "Where
the agent's memory and start-up go"). Those texts are the same at every start, so their
code objects are cached, keyed by the exact generated text: a class that changes
generates another text, misses, and is compiled as before, so a stale cache costs time,
never correctness. attrs, which trio's classes use, does the same (one script per class,
compiled in ``attr._make``): ~0.011 CPU-s for its ~50 scripts. The ~20 scripts of
hashable classes embed ``hash()`` of a string (attrs' name for the class's hash), which
differs per process: they are cached with that number replaced by a marker
(``_TYPE_HASH_MARK``) and this process's number is put back into the code's constants
on a hit (~5 ms of start-up; before, they always missed).

How: ``install`` loads ``<agent>/__pycache__/dataclass-code.<cache_tag>.marshal`` (if it
is there and was written by this interpreter's bytecode version) and points the name
``exec`` in the ``dataclasses`` module (and ``compile`` in ``attr._make``) at a function
that runs the cached code object for a known text and compiles the others exactly as
the original call would (the same file name and inherited ``__future__`` flags: none for
dataclasses, ``annotations`` for attrs). ``uninstall`` (the end of start-up) puts
``dataclasses`` back and drops the table. ``build`` (``python -m agent.codecache``)
imports the agent's start-up modules with recording on and writes the file atomically;
it runs where ``compileall`` does (the benchmarks' byte-compile step, a package build).
Without it, an agent writes the cache itself at the end of its first start (``uninstall``
with ``write_back``), unless ``PYTHONDONTWRITEBYTECODE`` is set, as Python does with
``.pyc`` files.

While installed, a dataclass without a docstring gets its default ``__doc__`` (name and
signature) on first read rather than at class creation (``_SignatureDoc``: ~3.5 ms of
``inspect.signature`` calls at start-up for text nothing reads then).

Owns: the cache file's format, location, loading, writing and the three hooks.
Does not: decide when start-up ends (``agent.service``) or which modules the agent
loads (``agent.__main__``).
"""

from __future__ import annotations
import __future__

import _blake2
import builtins
import contextlib
import dataclasses
import importlib
import importlib.util
import marshal
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

CACHE_DIR = Path(__file__).resolve().parent / "__pycache__"
STARTUP_MODULES = (
    "trio",
    "agent.cli",
    "agent.log",
    "agent.service",
    "agent.overlay.extension",
    "agent.overlay.ipsec",
    "dataplane.monitor",  # imported by the reconcilers as they start
)
"""What ``agent.__main__`` imports to run an agent (the cache holds their dataclasses)."""
_HEADER = importlib.util.MAGIC_NUMBER + b"dataclass-code\n"
"""The file starts with the bytecode magic: another Python version's file is ignored."""

_ATTRS_PREFIX = "<attrs generated "
_TYPE_HASH_MARK = 0x5EED_C0DE_0A77_1234
"""Stands for the per-process type hash in a cached attrs ``__hash__`` (a positive number
no ``hash()`` of attrs' text is likely to be; a text that contains it is not normalised)."""

_ExecFn = Callable[..., None]
_Index = dict[bytes, tuple[int, int]]
_KEY_BYTES = 16
"""A key is a 16-byte BLAKE2b digest (``_key``)."""


class _Spans:
    """A loaded index, compact: its keys sorted in one bytes object and their (offset,
    length) as 4-byte pairs in another, found by binary search (~10 slices a lookup,
    ~600 lookups a start).

    Why not the dict ``load`` returns: its ~540 entries are ~110 KiB of small objects
    (key, tuple and two ints each) that live for the whole start-up and are freed at
    its end, when nothing allocates any more to reuse their space: the agent's RSS kept
    them (docs/performance.md, RSS). Made right after loading, the dict is freed before
    the modules load, which then reuse its space."""

    __slots__ = ("keys", "spans")

    def __init__(self, index: _Index) -> None:
        ordered = sorted(index)
        self.keys = b"".join(ordered)
        self.spans = b"".join(o.to_bytes(4, "little") + n.to_bytes(4, "little")
                              for o, n in (index[k] for k in ordered))

    def __len__(self) -> int:
        return len(self.keys) // _KEY_BYTES

    def get(self, key: bytes) -> tuple[int, int] | None:
        lo, hi = 0, len(self)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.keys[mid * _KEY_BYTES:(mid + 1) * _KEY_BYTES] < key:
                lo = mid + 1
            else:
                hi = mid
        if lo == len(self) or self.keys[lo * _KEY_BYTES:(lo + 1) * _KEY_BYTES] != key:
            return None
        return self._span(lo)

    def _span(self, i: int) -> tuple[int, int]:
        s = self.spans[i * 8:i * 8 + 8]
        return int.from_bytes(s[:4], "little"), int.from_bytes(s[4:], "little")

    def items(self) -> Iterator[tuple[bytes, tuple[int, int]]]:
        for i in range(len(self)):
            yield self.keys[i * _KEY_BYTES:(i + 1) * _KEY_BYTES], self._span(i)


class _Table:
    """The cache as loaded: an index from the hash of a text to its code's marshalled
    bytes in one blob. Code objects are unmarshalled one at a time as dataclasses asks
    for them, so start-up allocates and frees in the order compiling would (loading all
    at once left ~1 MiB of fragmented heap behind), and the texts are never loaded."""

    __slots__ = ("blob", "hits", "index", "missed", "misses", "recorded")

    def __init__(self, index: _Index, blob: bytes, *, record: bool) -> None:
        self.index = _Spans(index)
        self.blob = memoryview(blob)
        self.recorded: dict[bytes, bytes] | None = {} if record else None
        self.hits = 0
        self.misses = 0
        self.missed: list[str] = []
        """The file names of the texts compiled (``<string>`` for dataclasses)."""

    def code(self, source: str, filename: str = "<string>", flags: int = 0) -> CodeType:
        type_hash, stored = None, source
        if filename.startswith(_ATTRS_PREFIX):
            type_hash, stored = _attrs_normalised(source, filename)
        key = _key(stored, filename, flags)
        where = self.index.get(key)
        if where is not None:
            cached = marshal.loads(self.blob[where[0]:where[0] + where[1]])
            if isinstance(cached, CodeType):
                if type_hash is not None:
                    cached, swapped = _swap_const(cached, _TYPE_HASH_MARK, type_hash)
                if type_hash is None or swapped == 1:
                    self.hits += 1
                    return cached
        self.misses += 1
        self.missed.append(filename)
        code: CodeType = compile(source, filename, "exec", flags=flags, dont_inherit=True)
        if self.recorded is not None:
            kept = code if stored is source else compile(stored, filename, "exec", flags=flags, dont_inherit=True)
            self.recorded[key] = marshal.dumps(kept)
        return code

    def entries(self) -> dict[bytes, bytes]:
        out = {k: bytes(self.blob[o:o + n]) for k, (o, n) in self.index.items()}
        out.update(self.recorded or {})
        return out


_state: dict[str, Any] = {"table": None, "path": None}


def default_path() -> Path:
    tag = sys.implementation.cache_tag or "none"
    return CACHE_DIR / f"dataclass-code.{tag}.marshal"


def _key(source: str, filename: str, flags: int) -> bytes:
    # blake2b from its own small module (hashlib is deferred: it would map OpenSSL).
    h = _blake2.blake2b(digest_size=16)
    h.update(f"{flags}\0{filename}\0".encode("utf-8", "surrogatepass"))
    h.update(source.encode("utf-8", "surrogatepass"))
    return h.digest()


def _attrs_normalised(source: str, filename: str) -> tuple[int | None, str]:
    """(this process's type hash, the text with it replaced by the marker) for an attrs
    script whose ``__hash__`` embeds it; (None, ``source``) for any other text.

    attrs writes ``hash("<attrs generated hash MODULE.QUALNAME>")`` as a literal on a line
    of its own inside ``hash((...))``; its script's file name ends in the same
    ``MODULE.QUALNAME``. Anything else (another attrs version's layout) is left as is:
    it misses, as before.
    """
    qualname = filename[len(_ATTRS_PREFIX):-1].partition(" ")[2]
    literal = f" {hash(f'{_ATTRS_PREFIX}hash {qualname}>')},\n"
    if not qualname or source.count(literal) != 1 or str(_TYPE_HASH_MARK) in source:
        return None, source
    return hash(f"{_ATTRS_PREFIX}hash {qualname}>"), source.replace(literal, f" {_TYPE_HASH_MARK},\n")


def _swap_const(code: CodeType, old: int, new: int) -> tuple[CodeType, int]:
    """``code`` with the integer constant ``old`` replaced by ``new`` in it and the code it
    nests (tuples of constants included); how many were replaced."""
    count = 0

    def swap(value: object) -> object:
        nonlocal count
        if type(value) is int and value == old:
            count += 1
            return new
        if isinstance(value, CodeType):
            inner, n = _swap_const(value, old, new)
            count += n
            return inner
        if type(value) is tuple:
            return tuple(swap(v) for v in value)
        return value

    consts = tuple(swap(c) for c in code.co_consts)
    return (code.replace(co_consts=consts) if count else code), count


def _future_flags(module: ModuleType) -> int:
    """The compiler flags a ``compile`` call in ``module`` inherits (its __future__ imports)."""
    features: dict[str, Any] = {n: getattr(__future__, n) for n in __future__.all_feature_names}
    flags = 0
    for name, value in vars(module).items():
        if name in features and value is features[name]:
            flags |= int(value.compiler_flag)
    return flags


def load(path: Path) -> tuple[_Index, bytes]:
    """The index and blob in ``path``; empty if missing, unreadable or of another Python."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}, b""
    if not data.startswith(_HEADER):
        return {}, b""
    try:
        index, blob = marshal.loads(memoryview(data)[len(_HEADER):])
    except (EOFError, ValueError, TypeError):
        return {}, b""
    if not isinstance(index, dict) or not isinstance(blob, bytes) or len(blob) >= 1 << 32:
        return {}, b""
    for key, span in index.items():  # what ``_Spans`` holds: 16-byte keys, 32-bit spans
        if (type(key) is not bytes or len(key) != _KEY_BYTES or type(span) is not tuple or len(span) != 2
                or not all(type(v) is int and 0 <= v < 1 << 32 for v in span)):
            return {}, b""
    return index, blob


def install(path: Path | None = None, *, record: bool = False, fresh: bool = False,
            attrs: bool = True) -> int:
    """Serve ``dataclasses``' (and attrs') compiles from the cache in ``path``; how many
    entries it has.

    With ``record`` every text compiled meanwhile is remembered for ``save``; ``fresh``
    starts from an empty table (``build``: entries no start-up uses are not carried over).
    Without ``attrs``, attrs is neither imported nor hooked until ``hook_attrs``.
    """
    target = path or default_path()
    index, blob = ({}, b"") if fresh else load(target)
    table = _Table(index, blob, record=record)
    _state["path"] = target
    real_exec: _ExecFn = builtins.exec

    def cached_exec(source: object, globals: dict[str, Any] | None = None,
                    locals: dict[str, Any] | None = None) -> None:
        # dataclasses has no __future__ imports: ``exec(text)`` there compiles with none.
        if type(source) is str:
            real_exec(table.code(source), globals, locals)
        else:
            real_exec(source, globals, locals)

    _state["table"] = table
    dataclasses.exec = cached_exec  # type: ignore[attr-defined]
    _hook_docs()
    if attrs:
        hook_attrs()
    return len(index)


class _SignatureDoc:
    """A dataclass's default ``__doc__``, computed when first read: dataclasses writes the
    class name and ``inspect.signature`` of the class when the class has no docstring,
    ~50 us a class (~75 of the agent's start-up classes: ~3.5 ms), for a text nothing
    reads at start-up. ``type.__doc__`` calls a descriptor found in the class's own
    ``__doc__``, so ``cls.__doc__`` (help, pydoc) gets the same text, then kept."""

    __slots__ = ()

    def __get__(self, obj: object, owner: type | None = None) -> str:
        cls = owner if owner is not None else type(obj)
        import inspect  # as dataclasses does it

        try:
            text_sig = str(inspect.signature(cls)).replace(" -> None", "")
        except (TypeError, ValueError):
            text_sig = ""
        doc = cls.__name__ + text_sig
        if vars(cls).get("__doc__") is self:
            type.__setattr__(cls, "__doc__", doc)
        return doc


_PENDING_DOC = "\0dataclass doc pending"
"""A class's ``__doc__`` while dataclasses processes it (truthy: dataclasses leaves it)."""


def _hook_docs() -> None:
    real = dataclasses._process_class  # type: ignore[attr-defined]
    if getattr(real, "_codecache_docs", False):
        return

    def process_class(cls: type, *args: Any, **kwargs: Any) -> type:
        if vars(cls).get("__doc__"):
            return real(cls, *args, **kwargs)  # type: ignore[no-any-return]
        cls.__doc__ = _PENDING_DOC
        out: type = cls
        try:
            out = real(cls, *args, **kwargs)
        finally:
            for c in (cls, out):  # with slots=True dataclasses returns a copy of the class
                if vars(c).get("__doc__") is _PENDING_DOC:
                    type.__setattr__(c, "__doc__", _SignatureDoc())
        return out

    process_class._codecache_docs = True  # type: ignore[attr-defined]
    process_class.__wrapped__ = real  # type: ignore[attr-defined]
    dataclasses._process_class = process_class  # type: ignore[attr-defined]


def _unhook_docs() -> None:
    hooked = vars(dataclasses).get("_process_class")
    if getattr(hooked, "_codecache_docs", False):
        dataclasses._process_class = hooked.__wrapped__  # type: ignore[attr-defined, union-attr]


def hook_attrs() -> None:
    """Serve attrs' compiles from the installed cache too (imports attrs; trio needs it)."""
    table = _state["table"]
    attrs_make = _attrs_make()
    if table is None or attrs_make is None:
        return
    # attrs (trio's classes) compiles ``compile(script, filename, "exec")`` in a module
    # whose __future__ imports that call inherits.
    attrs_flags = _future_flags(attrs_make)
    real_compile = builtins.compile

    def cached_compile(source: Any, filename: Any, mode: str, *args: Any, **kwargs: Any) -> Any:
        if type(source) is str and type(filename) is str and mode == "exec" and not args and not kwargs:
            return table.code(source, filename, attrs_flags)
        return real_compile(source, filename, mode, *args, **kwargs)

    attrs_make.compile = cached_compile  # type: ignore[attr-defined]


def _attrs_make() -> ModuleType | None:
    """attrs' class maker, if attrs is installed (the agent has it through trio)."""
    try:
        return importlib.import_module("attr._make")
    except ImportError:
        return None


def uninstall(*, write_back: bool = False) -> None:
    """``dataclasses`` compiles by itself again; the table is dropped (its memory too).

    With ``write_back``, a cache that was missing or mostly stale (more misses than hits)
    is written with what was recorded, as Python writes a ``.pyc`` on first import: the
    agent's next start finds it. Nothing is written unless recording was on (the agent
    turns it off under ``PYTHONDONTWRITEBYTECODE``), and a directory that cannot be
    written only means no cache.
    """
    table = _state["table"]
    if write_back and table is not None and table.recorded and table.misses > table.hits:
        with contextlib.suppress(OSError):
            save(_state.get("path"))
    if "exec" in vars(dataclasses):
        del dataclasses.exec  # type: ignore[attr-defined]
    _unhook_docs()
    attrs_make = sys.modules.get("attr._make")
    if attrs_make is not None and "compile" in vars(attrs_make):
        del attrs_make.compile  # type: ignore[attr-defined]
    _state["table"] = None


def installed() -> bool:
    return "exec" in vars(dataclasses)


def counts() -> tuple[int, int]:
    """(hits, misses) of the installed cache; (0, 0) when none is."""
    table = _state["table"]
    return (table.hits, table.misses) if table is not None else (0, 0)


def missed() -> list[str]:
    """The file names of what the installed cache did not hold (compiled instead)."""
    table = _state["table"]
    return list(table.missed) if table is not None else []


def save(path: Path | None = None) -> int:
    """Write the loaded and the recorded entries to ``path`` (atomically); how many."""
    table = _state["table"]
    entries = table.entries() if table is not None else {}
    index: _Index = {}
    parts: list[bytes] = []
    offset = 0
    for key, code in entries.items():
        index[key] = (offset, len(code))
        parts.append(code)
        offset += len(code)
    target = path or default_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(_HEADER + marshal.dumps((index, b"".join(parts))))
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return len(index)


def build(path: Path | None = None, modules: Sequence[str] = STARTUP_MODULES) -> int:
    """Import ``modules`` with recording on (in a fresh interpreter, so that every
    dataclass is created here) and write the cache; how many entries it holds."""
    install(path, record=True, fresh=True)
    try:
        for name in modules:
            importlib.import_module(name)
        return save(path)
    finally:
        uninstall()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0]) if args else default_path()
    count = build(path)
    print(f"agent.codecache: {count} generated scripts in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
