"""Assemble and run one agent: sockets, core, driver, control API, signals, shutdown.

Owns: start-up order (bind everything before announcing anything), the one
nursery, and the stop policy:
- SIGTERM/SIGINT stop at once WITHOUT a leave (a restart must not make peers
  drop this host's overlay entries while its kernel keeps forwarding);
- with ``--leave-on-terminate`` the first signal leaves (up to
  ``LEAVE_ON_TERMINATE_WAIT``) and then stops; a second signal stops at once;
- ``agentctl leave`` leaves, answers the client, then stops.
Always exit status 0 on those paths. Start-up problems raise ``StartupError``
with a one-line reason. Does not: parse flags (``cli``) or set up logging.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import secrets
import signal
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import trio

from agent import control, transport
from agent.addresses import format_address
from agent.cli import AgentOptions
from agent.driver import Driver
from agent.events import EventHub
from agent.log import kv
from crypto.keyring import Keyring
from gossip.config import Config
from gossip.delegate import NullDelegate
from gossip.effects import Address
from gossip.serfcompat import encode_tags
from gossip.swim import Swim

log = logging.getLogger("agent.service")

LEAVE_ON_TERMINATE_WAIT = 3.0


class StartupError(RuntimeError):
    """The agent cannot start; the message is the one line shown to the operator."""


class Shutdown:
    def __init__(self) -> None:
        self.requested = trio.Event()
        self.reason = ""

    def request(self, reason: str) -> None:
        if not self.requested.is_set():
            self.reason = reason
            self.requested.set()


async def _handle_signals(
    signals: AsyncIterator[int], driver: Driver, leave_on_terminate: bool, shutdown: Shutdown
) -> None:
    async with trio.open_nursery() as nursery:
        leaving = False
        async for signum in signals:
            name = signal.Signals(signum).name
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


def _make_keyring(keys: tuple[bytes, ...]) -> Keyring | None:
    if not keys:
        return None
    return Keyring(list(keys), nonce_source=secrets.token_bytes)


async def run(
    opts: AgentOptions,
    *,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Run the agent until a stop is requested; return the exit status.

    ``task_status.started`` reports the advertised address once every socket is
    bound and the control API is accepting (tests and sd_notify hook here).
    """
    with contextlib.ExitStack() as stack:
        # Install signal handling first so an early SIGTERM is not lost.
        signals = (
            stack.enter_context(trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT))
            if handle_signals
            else None
        )
        config = Config.profile(opts.profile)
        if opts.state_dir:
            try:
                os.makedirs(opts.state_dir, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise StartupError(f"state dir {opts.state_dir}: {exc.strerror}") from None
        try:
            sockets = await transport.bind(opts.bind)
        except OSError as exc:
            raise StartupError(f"cannot bind {format_address(opts.bind)}: {exc.strerror or exc}") from None
        stack.callback(sockets.close)
        advertise = opts.advertise or sockets.addr
        if advertise[1] == 0:
            advertise = (advertise[0], sockets.addr[1])
        try:
            swim = Swim(
                config,
                opts.node,
                advertise,
                rng=random.Random(secrets.randbits(64)),
                now=trio.current_time(),
                delegate=NullDelegate(encode_tags(opts.tags)),
                keyring=_make_keyring(opts.encrypt_keys),
            )
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        try:
            ctl_sock = control.open_socket(opts.control_socket)
        except control.ControlError as exc:
            raise StartupError(str(exc)) from None
        hub = EventHub()
        driver = Driver(swim, sockets.udp, config, hub)
        shutdown = Shutdown()
        info: dict[str, Any] = {
            "profile": opts.profile,
            "encrypted": bool(opts.encrypt_keys),
            "bind": format_address(sockets.addr),
            "control_socket": opts.control_socket,
        }
        server = control.ControlServer(
            ctl_sock, opts.control_socket, driver, hub, info=info, request_stop=shutdown.request
        )
        stack.callback(server.close)

        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            nursery.start_soon(transport.receive_datagrams, sockets.udp, driver.offer_datagram)
            nursery.start_soon(partial(
                transport.serve_streams, sockets.tcp, driver.stream, driver.note_decode_error,
                exchange_timeout=config.tcp_timeout,
            ))
            nursery.start_soon(server.serve)
            if signals is not None:
                nursery.start_soon(_handle_signals, signals, driver, opts.leave_on_terminate, shutdown)
            log.info(kv(
                "agent-started", node=opts.node, bind=format_address(sockets.addr),
                advertise=format_address(advertise), profile=opts.profile,
                encrypted=bool(opts.encrypt_keys), control=opts.control_socket,
            ))
            if opts.join:
                log.info(kv("join", seeds=",".join(format_address(a) for a in opts.join)))
                await driver.join(opts.join)
            task_status.started(advertise)
            await shutdown.requested.wait()
            nursery.cancel_scope.cancel()
        log.info(kv("agent-stopped", reason=shutdown.reason))
    return 0
