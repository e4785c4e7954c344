"""agent.deferred: placeholders load the real module on first use, transparently.

Each case runs in a fresh interpreter (the test process has ssl and hashlib loaded
already, and placeholders are process-wide).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _run(code: str, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=30, check=False, cwd=cwd,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_trio_imports_without_loading_the_deferred_modules() -> None:
    out = _run(
        """
        import sys
        from agent import deferred
        assert deferred.defer(*deferred.AGENT_DEFERRED) == list(deferred.AGENT_DEFERRED)
        with deferred.glibc_sonames():  # as agent.__main__: else ctypes.util runs ldconfig
            import trio
        import agent.service
        print([n for n in deferred.AGENT_DEFERRED if not deferred.is_deferred(n)],
              "_ssl" in sys.modules, "_hashlib" in sys.modules)
        """
    )
    assert out == "[] False False"


def test_attrs_make_class_loads_unicodedata_when_called() -> None:
    out = _run(
        """
        from agent import deferred
        deferred.defer(*deferred.AGENT_DEFERRED)
        import attrs
        before = deferred.is_deferred("unicodedata")
        C = attrs.make_class("C", ["x"])
        print(before, deferred.is_deferred("unicodedata"), C(1).x)
        """
    )
    assert out == "True False 1"


def test_logging_an_exception_loads_traceback_when_needed() -> None:
    out = _run(
        """
        from agent import deferred
        deferred.defer(*deferred.AGENT_DEFERRED)
        import io, logging
        import trio
        import agent.service
        before = deferred.is_deferred("traceback"), deferred.is_deferred("base64")
        buf = io.StringIO()
        logging.basicConfig(stream=buf)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("t").exception("failed")
        from crypto.keyring import decode_key
        key = decode_key("AAAAAAAAAAAAAAAAAAAAAA==")
        print(before, "Traceback (most recent call last)" in buf.getvalue(), "ValueError: boom" in buf.getvalue(),
              len(key), deferred.is_deferred("traceback"), deferred.is_deferred("base64"))
        """
    )
    assert out == "(True, True) True True 16 False False"


def test_source_lines_load_tokenize_when_first_read() -> None:
    # dataclasses -> inspect -> tokenize (and linecache -> tokenize) only import it; a traceback's
    # source lines and inspect.getsource read files through it.
    out = _run(
        """
        from agent import deferred
        deferred.defer(*deferred.AGENT_DEFERRED)
        import dataclasses, inspect, linecache
        before = deferred.is_deferred("tokenize")
        line = linecache.getline(dataclasses.__file__, 1)
        source = inspect.getsource(dataclasses.fields)
        print(before, bool(line), source.startswith("def fields("), deferred.is_deferred("tokenize"))
        """
    )
    assert out == "True True True False"


def test_subprocess_loads_on_first_use_from_a_worker_thread() -> None:
    out = _run(
        """
        from agent import deferred
        deferred.defer(*deferred.AGENT_DEFERRED)
        import subprocess
        with deferred.glibc_sonames():
            import trio
        import agent.service
        before = deferred.is_deferred("subprocess")

        def run() -> str:
            try:
                return subprocess.run(["true"], capture_output=True, text=True, timeout=10).stdout
            except subprocess.TimeoutExpired:
                return "timeout"

        async def main() -> str:
            return await trio.to_thread.run_sync(run)

        print(before, repr(trio.run(main)), deferred.is_deferred("subprocess"))
        """
    )
    assert out == "True '' False"


def test_first_use_loads_the_real_module_and_old_references_keep_working() -> None:
    out = _run(
        """
        import sys
        from agent import deferred
        deferred.defer("ssl", "hashlib")
        import trio  # holds the placeholder for ssl
        from trio import _highlevel_ssl_helpers as helpers
        placeholder = helpers.ssl
        assert getattr(placeholder, "__path__", None) is None  # a probe: still deferred
        assert deferred.is_deferred("ssl")
        ctx = helpers.ssl.create_default_context()
        real = sys.modules["ssl"]
        assert real is not placeholder and not deferred.is_deferred("ssl")
        assert isinstance(ctx, real.SSLContext) and placeholder.SSLContext is real.SSLContext
        from ssl import PROTOCOL_TLS_CLIENT
        import hashlib
        print(hashlib.sha256(b"abc").hexdigest()[:16], PROTOCOL_TLS_CLIENT is real.PROTOCOL_TLS_CLIENT)
        """
    )
    assert out == "ba7816bf8f01cfea True"


def test_a_deferred_module_that_imports_another_deferred_one_loads() -> None:
    # secrets does `from hmac import compare_digest` while it is being loaded.
    out = _run(
        """
        from agent import deferred
        deferred.defer(*deferred.AGENT_DEFERRED)
        import secrets
        print(len(secrets.token_hex(4)), deferred.is_deferred("hmac"), deferred.is_deferred("ssl"))
        """
    )
    assert out == "8 False True"


def test_star_import_and_an_already_loaded_module() -> None:
    out = _run(
        """
        import sys, json
        from agent import deferred
        assert deferred.defer("json", "colorsys") == ["colorsys"]
        assert deferred.is_deferred("colorsys")
        from colorsys import *
        print(rgb_to_hsv(1.0, 0.0, 0.0), deferred.is_deferred("colorsys"))
        """
    )
    assert out == "(0.0, 1.0, 1.0) False"


@pytest.mark.parametrize("attempts", [1, 2])
def test_a_failing_import_raises_each_time_and_stays_deferred(tmp_path: Path, attempts: int) -> None:
    (tmp_path / "broken_mod.py").write_text("raise RuntimeError('broken on purpose')\n")
    out = _run(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from agent import deferred
        assert deferred.defer("broken_mod") == ["broken_mod"]
        import broken_mod
        for _ in range({attempts}):
            try:
                broken_mod.anything
            except RuntimeError as e:
                print(e, deferred.is_deferred("broken_mod"))
        """,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.splitlines() == ["broken on purpose True"] * attempts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc sonames are Linux's")
def test_trio_names_its_threads_without_an_ldconfig_child() -> None:
    out = _run(
        """
        import os, subprocess
        from agent import deferred
        children = []
        real_popen = subprocess.Popen
        class Counting(real_popen):
            def __init__(self, args, *a, **k):
                children.append(args)
                super().__init__(args, *a, **k)
        subprocess.Popen = Counting
        with deferred.glibc_sonames():
            import trio
        import ctypes.util
        from trio._core import _thread_cache
        glibc = os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc ")
        print(glibc, children, _thread_cache.set_os_thread_name is not None,
              ctypes.util.find_library.__module__)
        """
    )
    glibc, children, names, module = out.split(" ", 3)
    assert module == "ctypes.util"  # the real function is back
    if glibc == "True":
        assert children == "[]" and names == "True"
