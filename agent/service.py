"""Assemble and run one agent: state, sockets, core, driver, control API, metrics, systemd.

Of the three names a newcomer meets first: this module builds the agent and runs it
until it stops; ``agent.runtime.Runtime`` is the context it hands to control ops and
extensions; ``agent.membership.driver.Driver`` is the one task that owns the gossip
core.

Owns: start-up order (state dir and every socket before announcing anything;
READY=1 only when every ``Readiness`` condition holds), the one nursery, and
the stop policy:
- SIGTERM/SIGINT stop at once WITHOUT a leave (a restart must not make peers
  drop this host's overlay entries while its kernel keeps forwarding);
- with ``leave_on_terminate`` the first signal leaves (up to
  ``LEAVE_ON_TERMINATE_WAIT``) and then stops; a second signal stops at once;
- ``agentctl leave`` leaves, answers the client, then stops.
STOPPING=1 goes to systemd as soon as a stop begins. Always exit status 0 on
those paths. Start-up problems raise ``StartupError`` with a one-line reason.

Where later layers plug in (see ``Extension``): ``setup`` registers control
ops, readiness conditions, effect listeners, status sections and metric
sources before anything starts; ``run`` is started in the agent's nursery
right after the built-in tasks (before the join, so a layer can restore its state
first). The gossip delegate is made in ``_delegate``: an extension with
``make_delegate`` (``DelegateProvider``) supplies it.
Does not: parse flags (``agent.cli``), set up logging (``agent.__main__``), choose the
extensions (``agent.__main__`` too), or implement ops (``agent.control.ops``).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import signal
import socket as stdsocket
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Protocol

import trio

from agent.addresses import family_of, format_address
from agent.config import AgentConfig
from agent.control import ops
from agent.control.server import ControlError, ControlServer, open_socket
from agent.events import EventHub
from agent.log import kv
from agent.membership import transport
from agent.membership.driver import Driver
from agent.runtime import Readiness, Runtime, Shutdown
from agent.sdnotify import Notifier
from agent.store import records
from agent.store.files import StateError, StateStore
from agent.store.records import Persister
from crypto.keyring import Keyring
from gossip.delegate import Delegate, NullDelegate
from gossip.effects import Address, Effect, JoinFinished, KeyringChanged
from gossip.serf.payloads import encode_tags
from gossip.swim import Swim

log = logging.getLogger("agent.service")

LEAVE_ON_TERMINATE_WAIT = 8.0
PERSIST_INTERVAL = 2.0
"""How often the incarnation is checked for a change worth saving (refutations are rare)."""


class StartupError(RuntimeError):
    """The agent cannot start; the message is the one line shown to the operator."""


class Extension(Protocol):
    """A later layer (replicated tables, dataplane) plugged into the agent."""

    def setup(self, rt: Runtime, server: ControlServer) -> None:
        """Before any task starts: ``server.register(...)``, ``rt.readiness.require(...)``,
        ``rt.driver.on_effect(...)``, ``rt.metric_sources.append(...)``; must not block."""
        ...

    async def run(self, rt: Runtime, *, task_status: trio.TaskStatus[None] = ...) -> None:
        """The layer's tasks; call ``task_status.started()`` once it is serving."""
        ...


class DelegateProvider(Protocol):
    """An extension that supplies the gossip delegate (the overlay's replicated tables)."""

    def make_delegate(self, config: AgentConfig, advertise: Address, rng: random.Random) -> Delegate:
        """Called once, before the core exists; ValueError for a bad setting."""
        ...


def _delegate(config: AgentConfig, advertise: Address, extensions: Sequence[object] = ()) -> Delegate:
    """The core's delegate: the first extension's that provides one (``make_delegate``,
    e.g. ``agent.overlay.extension.Overlay``: the tables), else node meta (serf tags) only."""
    for ext in extensions:
        if hasattr(ext, "make_delegate"):
            provider: DelegateProvider = ext  # type: ignore[assignment]
            return provider.make_delegate(config, advertise, random.Random(int.from_bytes(os.urandom(8), "big")))
    return NullDelegate(encode_tags(config.tags))


async def _handle_signals(
    signals: AsyncIterator[int], driver: Driver, leave_on_terminate: bool, shutdown: Shutdown
) -> None:
    async with trio.open_nursery() as nursery:
        leaving = False
        async for signum in signals:
            name = signal.Signals(signum).name
            shutdown.stopping()
            if leave_on_terminate and not leaving:
                leaving = True
                log.info(kv("signal", signal=name, action="leave-then-stop"))

                async def leave_then_stop(name: str = name) -> None:
                    done = await driver.leave(LEAVE_ON_TERMINATE_WAIT)
                    log.info(kv("leave-finished", announced=done))
                    shutdown.request(name)

                nursery.start_soon(leave_then_stop)
            else:
                log.info(kv("signal", signal=name, action="stop"))
                shutdown.request(name)


def _open_state(config: AgentConfig, stack: contextlib.ExitStack) -> StateStore | None:
    if not config.state_dir:
        return None
    try:
        store = StateStore(config.state_dir).open()
    except StateError as exc:
        raise StartupError(str(exc)) from None
    stack.callback(store.close)
    return store


def _bind_metrics(addr: Address) -> trio.socket.SocketType:
    sock = stdsocket.socket(family_of(addr[0]), stdsocket.SOCK_STREAM)
    try:
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        reason = "address in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise StartupError(f"metrics_address {format_address(addr)}: {reason}") from None
    return trio.socket.from_stdlib_socket(sock)


async def _persist_loop(rt: Runtime, keyring_dirty: list[bool], wake: list[trio.Event]) -> None:
    """Save the incarnation when it moves (refutations) and the keyring after a remote change."""
    swim = rt.driver.swim
    while True:
        await rt.persister.save_incarnation(swim.local.incarnation)
        if keyring_dirty[0] and swim.keyring is not None and swim.keyring.primary is not None:
            keyring_dirty[0] = False
            if not await rt.persister.save_keyring(swim.keyring.keys):
                log.warning(kv("keyring-not-persisted", file=rt.persister.keyring_path,
                               error=rt.persister.last_error))
        wake[0] = trio.Event()
        with trio.move_on_after(PERSIST_INTERVAL):
            await wake[0].wait()


async def _announce_ready(rt: Runtime) -> None:
    await rt.readiness.wait()
    counts = sum(1 for m in rt.driver.swim.members() if m.status.label == "alive")
    log.info(kv("agent-ready", members_alive=counts))
    if rt.notifier is not None:
        rt.notifier.send("READY=1", f"STATUS=ready; {counts} members alive", f"MAINPID={os.getpid()}")


async def _watchdog(rt: Runtime, interval: float) -> None:
    """WATCHDOG=1 every ``interval`` while the driver task answers a no-op call in time.

    A wedged event loop or a stuck driver stops the pings and systemd restarts us.
    """
    assert rt.notifier is not None

    def noop(swim: Swim, now: float) -> tuple[None, list[Effect]]:
        return None, []

    while True:
        deadline = trio.current_time() + interval
        with trio.move_on_at(deadline):
            await rt.driver.call(noop)
            rt.notifier.send("WATCHDOG=1")
        await trio.sleep_until(deadline)


def _release_startup_memory() -> None:
    """Give the heap left over from imports and start-up back to the kernel (~1.5 MiB of RSS),
    and take the start-up objects out of the cyclic GC's sight.

    glibc keeps freed memory in its heap; one ``malloc_trim`` after start-up
    returns it. Elsewhere (musl, macOS) this does nothing. ``gc.freeze`` moves
    every object alive now (modules, classes, config) to the permanent generation,
    so later full collections do not walk them again and again (idle CPU); the
    process entry point (``agent.__main__``) ran start-up with GC off. No collection
    first: it walked all ~54,000 start-up objects for 0.022-0.025 CPU-s (at load average
    ~20; 10-15 % of a start) to free ~2,460 of them, ~50 KiB (classes replaced by their
    slotted copies, attrs' class builders, argparse's formatter, frames of caught
    exceptions: nothing that holds a socket or a file), which now stay frozen.
    The dataclass code cache (``agent.codecache``) is dropped, and written first if
    there was none (unless PYTHONDONTWRITEBYTECODE): every start-up class exists now.
    """
    import ctypes
    import gc

    from agent import codecache

    codecache.uninstall(write_back=True)
    gc.freeze()
    gc.enable()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


async def run(
    config: AgentConfig,
    *,
    handle_signals: bool = True,
    notifier: Notifier | None = None,
    watchdog_interval: float | None = None,
    extensions: Sequence[Extension] = (),
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run the agent until a stop is requested; return the exit status.

    With ``handle_signals`` (a real process) the sd_notify socket and watchdog
    come from the environment unless given. ``task_status.started`` reports the
    advertised address once every socket is bound and the join has started.
    """
    with contextlib.ExitStack() as stack:
        # Install signal handling first so an early SIGTERM is not lost.
        signals = (
            stack.enter_context(trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT))
            if handle_signals
            else None
        )
        if notifier is None and handle_signals:
            notifier, watchdog_interval = Notifier.from_environment()
        if notifier is not None:
            stack.callback(notifier.close)
        gossip_config = config.gossip_config()
        store = _open_state(config, stack)
        try:
            startup = records.load_startup(store, config)
        except records.PersistError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(f"state dir {config.state_dir}: {exc.strerror or exc}") from None
        for event, fields in startup.notes:
            log.warning(kv(event, **fields))
        readiness = Readiness()
        try:
            sockets = await transport.bind(config.bind)
        except OSError as exc:
            raise StartupError(f"cannot bind {format_address(config.bind)}: {exc.strerror or exc}") from None
        stack.callback(sockets.close)
        readiness.mark("sockets-bound")
        advertise = config.advertise or sockets.addr
        if advertise[1] == 0:
            advertise = (advertise[0], sockets.addr[1])
        # Always a keyring, empty when encryption is off, so that a cluster-wide
        # 'agentctl keys install --enable' (a serf key query) can switch it on here.
        keyring = Keyring(list(startup.keys), nonce_source=os.urandom)
        try:
            swim = Swim(
                gossip_config,
                config.node,
                advertise,
                rng=random.Random(int.from_bytes(os.urandom(8), "big")),
                now=trio.current_time(),
                delegate=_delegate(config, advertise, extensions),
                keyring=keyring,
                incarnation=startup.incarnation,
            )
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        swim.require_encryption = config.require_encryption
        try:
            ctl_sock = open_socket(config.control_socket, config.control_gid)
        except ControlError as exc:
            raise StartupError(str(exc)) from None
        metrics_sock = _bind_metrics(config.metrics_address) if config.metrics_address else None
        if metrics_sock is not None:
            stack.callback(metrics_sock.close)

        hub = EventHub()
        limits = config.limits_config()
        driver = Driver(swim, sockets.udp, gossip_config, hub, limits=limits)
        rt = Runtime(
            config=config,
            driver=driver,
            hub=hub,
            persister=Persister(store, config.keyring_path),
            readiness=readiness,
            shutdown=Shutdown(notifier),
            store=store,
            notifier=notifier,
            node_id=startup.node_id,
            started_at=driver.started_at,
        )
        rt.persister.saved_incarnation = startup.incarnation if store is not None else None
        rt.info.update({
            "profile": config.profile,
            "bind": format_address(sockets.addr),
            "control_socket": config.control_socket,
            "control_group": config.control_group,
            "state_dir": config.state_dir,
            "keyring_file": config.keyring_path,
            "keyring_source": startup.keyring_source,
            "metrics": format_address(metrics_sock.getsockname()[:2]) if metrics_sock else None,
            "vxlan_port": config.vxlan_port,
            "underlay_interface": config.underlay_interface,
            "underlay_mtu": config.underlay_mtu,
            "systemd": notifier is not None,
            "watchdog_interval": watchdog_interval,
        })
        server = ControlServer(ctl_sock, config.control_socket, rt, ops.builtin_ops(),
                               gid=config.control_gid, group_name=config.control_group,
                               max_connections=limits.control_connections,
                               idle_timeout=limits.control_idle_timeout)
        stack.callback(server.close)
        rt.status_sections.append(lambda: {"control_refused": server.refused,
                                           "streams": driver.streams.status()})

        # Effect listeners: readiness, the join outcome, and persistence of remote keyring changes.
        keyring_dirty = [False]
        wake = [trio.Event()]

        def joined(effect: JoinFinished) -> None:
            rt.join_outcome = {"contacted": effect.contacted,
                               "failed": [format_address(a) for a in effect.failed]}
            readiness.mark("first-join")

        def keyring_changed(effect: KeyringChanged) -> None:
            keyring_dirty[0] = True
            wake[0].set()

        driver.on_effect(JoinFinished, joined)
        driver.on_effect(KeyringChanged, keyring_changed)
        for ext in extensions:
            ext.setup(rt, server)

        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            nursery.start_soon(
                transport.receive_datagrams, sockets.udp, driver.offer_datagram, driver.offer_unreachable
            )
            nursery.start_soon(partial(
                transport.serve_streams, sockets.tcp, driver.stream, driver.note_decode_error,
                exchange_timeout=gossip_config.tcp_timeout, budget=driver.streams,
            ))
            await nursery.start(server.serve)
            readiness.mark("control-api")
            if signals is not None:
                nursery.start_soon(_handle_signals, signals, driver, config.leave_on_terminate, rt.shutdown)
            if store is not None or config.keyring_path is not None:
                nursery.start_soon(_persist_loop, rt, keyring_dirty, wake)
            if metrics_sock is not None:
                from agent import metrics  # prometheus_client only when metrics are on

                await nursery.start(metrics.serve, rt, metrics_sock)
            nursery.start_soon(_announce_ready, rt)
            if notifier is not None and watchdog_interval:
                nursery.start_soon(_watchdog, rt, watchdog_interval)
            # -- later layers start here (tables, dataplane reconciler) -------------------
            for ext in extensions:
                await nursery.start(partial(ext.run, rt))
            log.info(kv(
                "agent-started", node=config.node, bind=format_address(sockets.addr),
                advertise=format_address(advertise), profile=config.profile,
                incarnation=startup.incarnation, encrypted=keyring.primary is not None,
                keyring=startup.keyring_source, control=config.control_socket,
                state_dir=config.state_dir, metrics=rt.info["metrics"], systemd=notifier is not None,
            ))
            if config.join:
                log.info(kv("join", seeds=",".join(format_address(a) for a in config.join)))
                await driver.join(config.join)
            else:
                readiness.mark("first-join")  # nothing to wait for: we are the first node
            task_status.started(advertise)
            if handle_signals:  # a real agent process, not a test harness
                _release_startup_memory()
            await rt.shutdown.requested.wait()
            nursery.cancel_scope.cancel()
        log.info(kv("agent-stopped", reason=rt.shutdown.reason))
    return 0
