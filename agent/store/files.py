"""Crash-safe files: atomic replace, and a state directory of named JSON records.

Owns: ``atomic_write`` (temp file in the same directory, write, fsync, rename
over the target, fsync the directory: after a crash at any point the target
holds either the old or the new content, never a mix) and ``StateStore``, the
agent's state directory: an exclusive lock (two agents must not share one),
``save_json(name, obj)`` / ``load_json(name)`` for any record (read with the bounded
decoder ``agent.limits.loads``; a record beyond ``agent.limits.STATE_RECORD_MAX`` is
neither written nor read), removal of temp files a crash left behind, and quarantine
of a record that is unreadable anyway (disk fault, hand edit) so it cannot stop the
agent from starting: moved aside, logged as an error and listed in ``corrupt`` (the
agent's ``status`` warns about each until the operator acts); ``writable`` tells
whether a write of some size can be expected to succeed, so a request can be refused
before it changes anything.
Does not: know what the records mean (``agent.store.records``), or do async I/O
(callers run the blocking writes in a worker thread when they are on the loop).
Reference: rename(2) atomicity; fsync of the directory makes the rename durable.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from agent import limits
from agent.log import kv

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_TMP_MARK = ".tmp-"
LOCK_NAME = ".lock"
_counter = itertools.count()


log = logging.getLogger("agent.store")


class StateError(RuntimeError):
    """The state directory cannot be used; the message says why (one line)."""


@dataclass(frozen=True)
class CorruptRecord:
    """A record found unreadable and moved aside."""

    name: str
    path: str
    aside: str | None
    """Where it was moved (None: it could not be moved)."""
    reason: str

    def warning(self) -> str:
        where = f"; moved aside to {self.aside}" if self.aside else ""
        return f"state file {self.path} was unreadable ({self.reason}){where}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the file gets ``mode``.

    The temp file is created with ``mode`` from the start, so a secret is never
    readable by others, not even for a moment. Raises OSError.
    """
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    tmp = os.path.join(directory, f".{base}{_TMP_MARK}{os.getpid()}-{next(_counter)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; never widen beyond ``mode``
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


READABLE_RECORD = 16 * 1024
"""Records up to this size are written indented (for people); larger ones compactly,
with the C encoder (indenting takes Python's: 50 ms for 1,000 endpoints)."""


def encode_json(obj: Any) -> bytes:
    text = json.dumps(obj, separators=(",", ":"), sort_keys=True)
    if len(text) <= READABLE_RECORD:
        text = json.dumps(obj, indent=1, sort_keys=True)
    return (text + "\n").encode()


class StateStore:
    """One agent's state directory. ``open()`` locks it; ``close()`` releases it."""

    def __init__(self, path: str, max_record: int = limits.STATE_RECORD_MAX) -> None:
        self.path = os.path.abspath(path)
        self.max_record = max_record
        self.corrupt: dict[str, CorruptRecord] = {}
        """Records found unreadable since the start (by name), for status warnings."""
        self._lock_fd: int | None = None

    # -- life cycle ------------------------------------------------------------------------

    def open(self) -> StateStore:
        """Create (0700) and lock the directory, and remove crash leftovers. Raises StateError."""
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"state dir {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_small(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f" (pid {holder})" if holder else ""
                raise StateError(f"state dir {self.path} is in use by another agent{who}") from None
            raise StateError(f"state dir {self.path}: cannot lock: {exc.strerror}") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        self._remove_leftovers()
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> StateStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _remove_leftovers(self) -> None:
        """Temp files of writes a crash interrupted; the targets are intact."""
        with contextlib.suppress(OSError):
            for entry in os.listdir(self.path):
                if entry.startswith(".") and _TMP_MARK in entry:
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self.path, entry))

    # -- records -------------------------------------------------------------------------------

    def file(self, name: str) -> str:
        """Path of record ``name`` (``name.json``); names are simple words (no paths)."""
        if not _NAME.match(name):
            raise ValueError(f"bad state record name {name!r}")
        return os.path.join(self.path, f"{name}.json")

    def save_json(self, name: str, obj: Any, mode: int = 0o600) -> None:
        """Write record ``name`` atomically. Raises OSError (EFBIG beyond ``max_record``),
        or TypeError for non-JSON values."""
        data = encode_json(obj)
        if len(data) > self.max_record:
            raise OSError(errno.EFBIG, f"record {name} would be {len(data)} bytes, beyond the "
                                       f"limit of {self.max_record} (agent.limits.STATE_RECORD_MAX)")
        atomic_write(self.file(name), data, mode)

    def writable(self, need: int = 0) -> str | None:
        """Why a write of about ``need`` bytes would fail now (read-only, full, gone), or
        None. A cheap check before a change that must be saved: the write itself still
        reports what this cannot foresee."""
        try:
            if not os.access(self.path, os.W_OK):
                return f"state dir {self.path} is not writable (read-only file system or permissions)"
            st = os.statvfs(self.path)
        except OSError as exc:
            return f"state dir {self.path}: {exc.strerror or exc}"
        if st.f_flag & os.ST_RDONLY:
            return f"state dir {self.path} is on a read-only file system"
        free = st.f_bavail * st.f_frsize
        if free < need + 2 * st.f_frsize:  # the record, plus a block of slack for the rename
            return f"state dir {self.path} is full ({free} bytes free, {need} needed)"
        return None

    def load_json(self, name: str) -> Any | None:
        """Record ``name``, or None when it does not exist or is unreadable.

        An unreadable record (which atomic writes never produce: a disk fault, a hand
        edit) is moved aside to ``name.json.corrupt-<time>`` so the operator can look at
        it, logged as an error and kept in ``corrupt``; the caller starts without it
        instead of refusing to start (and must not act on its absence as if it were empty).
        """
        path = self.file(name)
        try:
            with open(path, "rb") as f:
                data = f.read(self.max_record + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._corrupt(name, path, f"cannot read it: {exc.strerror or exc}", move=False)
            return None
        try:
            return limits.loads(data, max_bytes=self.max_record, what="the record")
        except limits.JSONLimitError as exc:
            self._corrupt(name, path, str(exc), move=True)
            return None

    def _corrupt(self, name: str, path: str, reason: str, *, move: bool) -> None:
        aside = None
        if move:
            try:
                aside = self.quarantine(name)
            except OSError as exc:
                reason += f"; it could not be moved aside: {exc.strerror or exc}"
        record = CorruptRecord(name, path, aside, reason)
        self.corrupt[name] = record
        log.error(kv("state-record-corrupt", record=name, file=path, moved_to=aside, reason=reason))

    def quarantine(self, name: str) -> str | None:
        """Move record ``name`` aside; returns the new path (None if it was gone)."""
        path = self.file(name)
        aside = f"{path}.corrupt-{int(time.time())}"
        try:
            os.replace(path, aside)
        except FileNotFoundError:
            return None
        return aside

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file(name))
        _fsync_dir(self.path)

    def names(self) -> list[str]:
        """Records present, sorted."""
        try:
            entries = os.listdir(self.path)
        except OSError:
            return []
        return sorted(e[:-5] for e in entries if e.endswith(".json") and not e.startswith("."))


def _read_small(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.pread(fd, 32, 0).decode(errors="replace").strip()
    return ""
