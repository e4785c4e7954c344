"""agent.codecache: dataclass methods served from the on-disk cache behave exactly like
freshly compiled ones, a stale or foreign file only costs a compile, and a cache built by
``python -m agent.codecache`` covers everything the agent imports at start-up."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import CodeType

import pytest

from agent import codecache

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    codecache.uninstall()


def _define(tag: int) -> type:  # the same texts whatever the tag; the qualname differs
    @dataclasses.dataclass(frozen=True, slots=True)
    class Point:
        x: int
        y: str = "a"
        z: tuple[int, ...] = dataclasses.field(default_factory=tuple)

    Point.__qualname__ = f"Point{tag}"
    return Point


def test_cached_methods_behave_like_compiled_ones(tmp_path: Path) -> None:
    path = tmp_path / "cache.marshal"
    plain = _define(0)
    assert codecache.install(path, record=True) == 0  # no file yet
    _define(0)
    hits, misses = codecache.counts()
    assert hits == 0 and misses >= 5  # __init__, __repr__, __eq__, __hash__, __setattr__, ...
    assert codecache.save(path) == misses
    codecache.uninstall()
    assert not codecache.installed()

    assert codecache.install(path) == misses
    cached = _define(0)
    assert codecache.counts() == (misses, 0)
    for name in ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__"):
        assert getattr(cached, name).__code__ == getattr(plain, name).__code__, name
    # No __future__ flag leaks in from codecache's own module: annotations stay objects.
    init_annotations = vars(cached)["__init__"].__annotations__
    assert init_annotations == vars(plain)["__init__"].__annotations__
    assert init_annotations["return"] is None
    a, b = cached(1), cached(1, "a", ())
    assert a == b and hash(a) == hash(b) and repr(a) == "Point0(x=1, y='a', z=())"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.x = 2  # type: ignore[misc]


def test_a_changed_class_misses_and_is_compiled(tmp_path: Path) -> None:
    path = tmp_path / "cache.marshal"
    codecache.install(path, record=True)
    _define(0)
    codecache.save(path)
    codecache.uninstall()
    codecache.install(path)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Other:  # another field: every generated text differs
        w: int

    hits, misses = codecache.counts()
    assert hits == 0 and misses >= 5
    assert repr(Other(2)).endswith("Other(w=2)") and Other(2) == Other(2)


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x00" * 64])
def test_an_unusable_file_is_ignored(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cache.marshal"
    path.write_bytes(content)
    assert codecache.install(path) == 0
    assert _define(0)(3).x == 3
    codecache.uninstall()
    assert "exec" not in vars(dataclasses)


def test_a_built_cache_covers_the_agents_start_up(tmp_path: Path) -> None:
    path = tmp_path / "cache.marshal"
    built = subprocess.run([sys.executable, "-m", "agent.codecache", str(path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, check=False)
    assert built.returncode == 0, built.stderr
    code = textwrap.dedent(f"""
        import importlib
        from pathlib import Path
        from agent import codecache
        codecache.install(Path({str(path)!r}))
        for name in codecache.STARTUP_MODULES:
            importlib.import_module(name)
        print(*codecache.counts(), *codecache.missed(), sep=chr(10))
    """)
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    hits, misses, *missed = run.stdout.splitlines()
    # attrs scripts of hashable classes change between processes (their __hash__ embeds
    # hash() of a string, randomised per process): found too, with the number put back.
    assert int(hits) > 500 and int(misses) == len(missed) == 0, missed


def _same_code(a: CodeType, b: CodeType) -> bool:
    """Equal code, but for column positions (a cached attrs ``__hash__`` has another
    literal in the place of the per-process type hash: only its columns differ)."""
    def shape(c: CodeType) -> tuple[object, ...]:
        return (c.co_code, c.co_names, c.co_varnames, c.co_name, c.co_qualname, list(c.co_lines()),
                tuple(shape(k) if isinstance(k, CodeType) else k for k in c.co_consts))
    return shape(a) == shape(b)


def _define_attrs() -> type:
    import attr

    @attr.s(frozen=True, slots=True)
    class Pair:
        left: int = attr.ib()
        right: str = attr.ib(default="r")

    return Pair


def test_attrs_classes_get_the_code_attrs_would_compile(tmp_path: Path) -> None:
    """trio's classes are attrs classes: attrs compiles in a module with
    ``from __future__ import annotations``, and the cached code keeps that flag."""
    path = tmp_path / "cache.marshal"
    plain = _define_attrs()
    codecache.install(path, record=True)
    _define_attrs()
    codecache.save(path)
    codecache.uninstall()
    assert "compile" not in vars(sys.modules["attr._make"])

    codecache.install(path)
    cached = _define_attrs()
    hits, misses = codecache.counts()
    assert misses == 0 and hits >= 1  # attrs compiles one script per class
    generated = [name for name, fn in vars(plain).items()
                 if callable(fn) and getattr(getattr(fn, "__code__", None), "co_filename", "").startswith("<attrs")]
    assert "__init__" in generated
    for name in generated:
        assert _same_code(vars(cached)[name].__code__, vars(plain)[name].__code__), name
    assert cached(1) == cached(1, "r") and hash(cached(1)) == hash(cached(1, "r"))


def test_a_missing_cache_is_written_back_at_the_end_of_start_up(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "cache.marshal"
    codecache.install(path, record=False)  # as under PYTHONDONTWRITEBYTECODE
    _define(0)
    codecache.uninstall(write_back=True)
    assert not path.exists()

    codecache.install(path, record=True)
    _define(0)
    codecache.uninstall(write_back=True)
    assert path.exists()
    written = path.stat().st_mtime_ns

    codecache.install(path, record=True)
    _define(0)
    hits, misses = codecache.counts()
    assert hits >= 5 and misses == 0
    codecache.uninstall(write_back=True)  # a cache that served: not written again
    assert path.stat().st_mtime_ns == written


_HASHABLE_ATTRS = """
import sys
import attr
from pathlib import Path
from agent import codecache

def define():
    @attr.s(frozen=True, slots=True, hash=True)
    class Key:
        left = attr.ib()
        right = attr.ib(default="r")

    @attr.s(frozen=True, hash=True)
    class Empty:  # no field: attrs' hash tuple is a constant
        pass

    return Key, Empty

path = Path(sys.argv[1])
plain = define()
codecache.install(path, record=sys.argv[2] == "record")
cached = define()
hits, misses = codecache.counts()
if sys.argv[2] == "record":
    codecache.save(path)
def shape(c):  # the code but its column positions (see _same_code)
    return (c.co_code, c.co_names, c.co_varnames, c.co_name, c.co_qualname, list(c.co_lines()),
            tuple(shape(k) if hasattr(k, "co_code") else k for k in c.co_consts))
same = all(shape(vars(c)["__hash__"].__code__) == shape(vars(p)["__hash__"].__code__)
           for c, p in zip(cached, plain))
print(hits, misses, same, hash(cached[0](1)) == hash(plain[0](1)), hash(cached[1]()) == hash(plain[1]()))
"""


def test_hashable_attrs_classes_hit_across_processes(tmp_path: Path) -> None:
    """attrs puts ``hash()`` of a string into a hashable class's ``__hash__``: another value
    in every process (hash randomisation). The cached code gets this process's value."""
    path = tmp_path / "cache.marshal"

    def run(seed: str, mode: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", _HASHABLE_ATTRS, str(path), mode], cwd=ROOT,
                              env={**os.environ, "PYTHONHASHSEED": seed},
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert run("1", "record") == ["0", "2", "True", "True", "True"]
    # Another seed, so another type hash in both scripts: still served from the cache.
    assert run("2", "load") == ["2", "0", "True", "True", "True"]


def _docless() -> list[type]:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        x: int
        y: str = "a"

    @dataclasses.dataclass
    class Plain:
        z: list[int] = dataclasses.field(default_factory=list)

    @dataclasses.dataclass
    class Child(Plain):
        w: int = 0

    @dataclasses.dataclass
    class Documented:
        """Kept as written."""

        v: int

    return [Slotted, Plain, Child, Documented]


def test_default_docs_are_dataclasses_own_text_made_on_first_read(tmp_path: Path) -> None:
    plain = [c.__doc__ for c in _docless()]
    calls: list[object] = []
    real_signature = dataclasses.inspect.signature  # type: ignore[attr-defined]

    def counting(obj: object, *args: object, **kwargs: object) -> object:
        calls.append(obj)
        return real_signature(obj, *args, **kwargs)

    codecache.install(tmp_path / "cache.marshal")
    dataclasses.inspect.signature = counting  # type: ignore[attr-defined]
    try:
        lazy = _docless()
        assert calls == []  # no signature computed while the classes were made
        assert [c.__doc__ for c in lazy] == plain
        assert plain[0] == "Slotted(x: 'int', y: 'str' = 'a')" and plain[3] == "Kept as written."
        assert len(calls) == 3 and lazy[0](1).__doc__ == plain[0]  # instances read it too
        assert all(isinstance(vars(c)["__doc__"], str) for c in lazy)  # kept once computed
    finally:
        dataclasses.inspect.signature = real_signature  # type: ignore[attr-defined]
    codecache.uninstall()
    assert not hasattr(dataclasses._process_class, "_codecache_docs")  # type: ignore[attr-defined]
