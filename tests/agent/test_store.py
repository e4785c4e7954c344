"""The state directory: atomic writes, locking, start-up records, and kill -9 at random points."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import trio

from agent import service
from agent.cli import AgentOptions
from agent.store import records as persist
from agent.store.files import StateError, StateStore, atomic_write
from tests.agent.conftest import query, start_agent, statuses, wait_until

KEY_A, KEY_B = bytes(range(16)), bytes(range(1, 33))


def opts(state_dir: Path, **extra: object) -> AgentOptions:
    return AgentOptions(node="n1", bind=("127.0.0.1", 0), state_dir=str(state_dir), **extra)  # type: ignore[arg-type]


def test_atomic_write_replaces_with_mode(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")
    old_umask = os.umask(0)
    try:
        atomic_write(str(target), b"new", 0o600)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f.json"]  # no temp file left


def test_store_records_lock_and_leftovers(tmp_path: Path) -> None:
    d = tmp_path / "state"
    with StateStore(str(d)) as store:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert store.load_json("endpoints") is None
        store.save_json("endpoints", {"ep1": {"mac": "02:00:00:00:00:01"}})
        assert store.load_json("endpoints") == {"ep1": {"mac": "02:00:00:00:00:01"}}
        assert store.names() == ["endpoints"]
        with pytest.raises(StateError, match=r"in use by another agent \(pid \d+\)"):
            StateStore(str(d)).open()
        with pytest.raises(ValueError, match="bad state record name"):
            store.save_json("../escape", {})
        store.delete("endpoints")
        assert store.load_json("endpoints") is None
    # A crash mid-write leaves a temp file: removed at the next open, the target intact.
    (d / "endpoints.json").write_text('{"ok": 1}')
    (d / ".endpoints.json.tmp-123-4").write_text('{"half')
    with StateStore(str(d)) as store:
        assert not (d / ".endpoints.json.tmp-123-4").exists()
        assert store.load_json("endpoints") == {"ok": 1}


def test_unreadable_record_is_moved_aside(tmp_path: Path) -> None:
    with StateStore(str(tmp_path)) as store:
        (tmp_path / "endpoints.json").write_bytes(b'{"trunc')
        assert store.load_json("endpoints") is None
        aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
        assert len(aside) == 1 and aside[0].startswith("endpoints.json.corrupt-")


def test_startup_identity_and_incarnation(tmp_path: Path) -> None:
    with StateStore(str(tmp_path)) as store:
        first = persist.load_startup(store, opts(tmp_path))
        assert first.incarnation == 1 and len(first.node_id) == 32 and not first.notes
        second = persist.load_startup(store, opts(tmp_path))
        assert second.incarnation == 2  # a restart announces a higher incarnation
        assert second.node_id == first.node_id
        persist.save_incarnation(store, 41)  # refutations while running
        renamed = persist.load_startup(store, AgentOptions(node="n2", bind=("127.0.0.1", 0)))
        assert renamed.incarnation == 42 and renamed.node_id == first.node_id
        assert renamed.notes[0][0] == "node-renamed"
        # A damaged record does not stop the agent: start from scratch, say so.
        (tmp_path / "incarnation.json").write_text('{"incarnation": "x"}')
        again = persist.load_startup(store, opts(tmp_path))
        assert again.incarnation == 1
        assert ("state-record-replaced", {"record": "incarnation", "reason": "malformed"}) in again.notes


def test_keyring_file_seeds_then_wins(tmp_path: Path) -> None:
    ring = tmp_path / "keyring.json"
    with StateStore(str(tmp_path)) as store:
        s = persist.load_startup(store, opts(tmp_path, encrypt_keys=(KEY_A,)))
        assert s.keys == (KEY_A,) and s.keyring_source == "config"
        assert persist.read_keyring_file(str(ring)) == [KEY_A]
        assert stat.S_IMODE(ring.stat().st_mode) == 0o600
        # Changed at run time (agentctl keys): the file now wins over the config.
        persist.write_keyring_file(str(ring), [KEY_B, KEY_A])
        s = persist.load_startup(store, opts(tmp_path, encrypt_keys=(KEY_A,)))
        assert s.keys == (KEY_B, KEY_A) and s.keyring_source == "file"
        s = persist.load_startup(store, opts(tmp_path, encrypt_keys=(bytes(24),)))
        assert s.keys == (KEY_B, KEY_A)
        assert any(event == "encrypt-keys-ignored" for event, _ in s.notes)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"[", "not JSON"),
        (b"[]", "non-empty JSON array"),
        (b'{"k": 1}', "non-empty JSON array"),
        (b'["AAAA"]', "key #1: encryption key must decode to 16, 24 or 32 bytes"),
    ],
)
def test_bad_keyring_file_refuses_to_start(tmp_path: Path, content: bytes, needle: str) -> None:
    """Unlike other records, a keyring is not guessed at: starting without it could
    silently turn encryption off."""
    (tmp_path / "keyring.json").write_bytes(content)
    with StateStore(str(tmp_path)) as store, pytest.raises(persist.PersistError, match=needle) as info:
        persist.load_startup(store, opts(tmp_path))
    assert str(tmp_path / "keyring.json") in str(info.value)


async def test_persister_rejects_non_json(tmp_path: Path) -> None:
    with StateStore(str(tmp_path)) as store:
        p = persist.Persister(store, None)
        assert await p.save_json("endpoints", {"a": [1, 2]})
        with pytest.raises(TypeError):
            await p.save_json("endpoints", {"a": object()})
        assert store.load_json("endpoints") == {"a": [1, 2]}
        assert not await persist.Persister(None, None).save_json("endpoints", {})


async def test_state_dir_in_use_is_a_startup_error(tmp_path: Path, sockdir: str) -> None:
    with StateStore(str(tmp_path)):
        o = opts(tmp_path, control_socket=f"{sockdir}/x.sock")
        with pytest.raises(service.StartupError, match="in use by another agent"):
            await service.run(o, handle_signals=False)


async def test_restart_rejoins_with_a_higher_incarnation(tmp_path: Path, sockdir: str) -> None:
    async with trio.open_nursery() as nursery:
        seed = await start_agent(nursery, sockdir, "seed")
        a = await start_agent(nursery, sockdir, "a", join=(seed.addr,), state_dir=str(tmp_path))

        async def both() -> bool:
            return await statuses(seed.socket) == {"seed": "alive", "a": "alive"}

        await wait_until(both, "a to join")
        before = (await query(a.socket, "status"))["incarnation"]
        assert json.loads((tmp_path / "incarnation.json").read_text())["incarnation"] == before
        a.kill()  # a crash: no leave
        await a.finished.wait()
        # Same address, as a restarted host has (a new address would be a name conflict
        # that memberlist resolves only once the old one is dead).
        a2 = await start_agent(nursery, sockdir, "a", join=(seed.addr,), state_dir=str(tmp_path),
                               bind=a.addr)
        st = await query(a2.socket, "status")
        assert st["incarnation"] == before + 1

        async def seed_sees_new_incarnation() -> bool:
            members = {m["name"]: m for m in await query(seed.socket, "members")}
            return bool(members["a"]["status"] == "alive" and members["a"]["incarnation"] == before + 1)

        await wait_until(seed_sees_new_incarnation, "the seed to take a's new incarnation")
        nursery.cancel_scope.cancel()


# -- kill -9 during writes -------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from agent.store import records as persist
    from agent.store.files import StateStore
    store = StateStore(sys.argv[1]).open()
    keys = [bytes([i]) * 16 for i in range(1, 5)]
    n = (store.load_json("incarnation") or {}).get("incarnation", 0)
    print("go", flush=True)
    while True:
        n += 1
        persist.save_incarnation(store, n)
        persist.write_keyring_file(sys.argv[1] + "/keyring.json", keys[: 1 + n % 4])
        store.save_json("endpoints", {"seq": n, "items": [{"id": i, "pad": "x" * (n % 997)}
                                                           for i in range(n % 50)]})
""")


def _check_record_set(state: Path, seed: int, round_: int) -> int:
    """What the agent reads at start-up after the crash; returns the incarnation it would use."""
    where = f"(seed {seed}, round {round_})"
    with StateStore(str(state)) as store:
        s = persist.load_startup(store, opts(state))  # raises if the agent would refuse to start
        assert not s.notes, f"start-up had to repair state {where}: {s.notes}"
        ep = store.load_json("endpoints")
        if ep is not None:
            n = ep["seq"]
            assert len(ep["items"]) == n % 50, where
            assert all(item["pad"] == "x" * (n % 997) for item in ep["items"]), where
        assert not [p for p in state.iterdir() if ".corrupt-" in p.name or ".tmp-" in p.name], where
        return s.incarnation


@pytest.mark.slow
def test_kill_9_during_writes_never_leaves_unusable_state(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERLAY_AGENT_")}
    last = -1
    for round_ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(state)], stdout=subprocess.PIPE, env=env)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"go\n"
            time.sleep(rng.uniform(0, 0.05))  # some rounds die in the first write, some later
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        incarnation = _check_record_set(state, seed, round_)
        assert incarnation > last, f"incarnation went backwards (seed {seed}, round {round_})"
        last = incarnation
    assert last > 20  # the writers did write


@pytest.mark.slow
async def test_agent_starts_from_state_left_by_kill_9(tmp_path: Path, sockdir: str) -> None:
    """The real start-up path after the writer above was killed mid-write."""
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERLAY_AGENT_")}
    proc = await trio.lowlevel.open_process([sys.executable, "-c", WRITER, str(state)],
                                            stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        got = b""
        with trio.fail_after(30):
            while not got.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(16)
                assert chunk, "the writer exited early"
                got += chunk
        assert got == b"go\n"
        await trio.sleep(0.03)
    finally:
        proc.kill()
        await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
    async with trio.open_nursery() as nursery:
        agent = await start_agent(nursery, sockdir, "n1", state_dir=str(state))
        st = await query(agent.socket, "status")
        assert st["encrypted"] is True and st["keyring_source"] == "file"
        assert st["ready"] is True
        nursery.cancel_scope.cancel()
