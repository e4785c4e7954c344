"""``overlay-agent`` / ``python -m agent``: command line -> config -> logging -> ``service.run``.

Commands: ``[run] FLAGS`` (the default) and ``check-config [FLAGS] [--show]``.
Exit status: 0 after a requested stop (signal or ``agentctl leave``) or a valid
configuration; 1 when the agent cannot start (one line on stderr); 2 for bad
flags or configuration (one line on stderr).

Owns: the process entry point: which extensions the product runs
(``agent.overlay.extension.Overlay`` and ``agent.overlay.ipsec.IpsecAgent``, plus
``agent.runtimes.docker.plugin.DockerPlugin`` with ``docker_plugin_socket``), module
loading order (``agent.deferred`` and ``agent.codecache`` before trio; nothing heavy for
``check-config``)
and the exit status. Does not: define flags (``agent.cli``) or start anything itself
(``agent.service.run``).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.config import AgentConfig
    from agent.configload import Loaded

DECODE_MEMO_BYTES = 256 * 1024
"""The agent's bound on decoded datagrams kept for repeats (``codec.set_packet_memo_bytes``:
an agent almost never receives the same datagram twice; the simulator's 8 MiB default
would only slowly fill the heap)."""
PART_CACHE_ENTRIES = 256
"""The agent's memo of decoded message parts (``codec.set_part_cache_size``). An agent
meets a part again only when several peers relay the same broadcast, within seconds; with
the codec's 4,096 entries the memo kept filling with unique pings, acks and table messages
(~0.5-1.5 KiB each, keys included) for 20-40 minutes under ``bench soak``'s churn: the
largest part of the Python heap's growth there (issue 18)."""


def main(argv: Sequence[str] | None = None) -> int:
    # No cyclic GC while ~100 modules load and start up: their objects live for good, and
    # collections in between cost ~10 % of the start-up CPU. ``service.run`` freezes them
    # and turns GC back on once the agent is up (``_release_startup_memory``).
    gc.disable()
    try:
        return _main(argv)
    finally:
        gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    from agent import deferred

    # Before the command line is parsed: argparse loads shutil, which would load bz2 and
    # lzma (and map their libraries) if they were not placeholders yet; and before the code
    # cache, whose ``dataclasses`` imports ``inspect``, which imports ``tokenize``.
    deferred.defer(*deferred.AGENT_DEFERRED)
    from agent import codecache

    # Dataclass (and attrs) methods compiled at an earlier start (~0.05 CPU-s of ~0.19),
    # from the first module that defines some on; ``service.run`` uninstalls it once the
    # agent is up (writing it first if there was none, like a .pyc).
    codecache.install(record=not sys.dont_write_bytecode, attrs=False)
    try:
        return _command(argv)
    finally:
        codecache.uninstall()  # start-up failed or another command: nothing written


def _command(argv: Sequence[str] | None) -> int:
    from agent import codecache

    name, config, loaded, show = _parse(argv)
    if name == "version":
        from agent import __version__

        print(f"overlay-agent {__version__}")
        return 0
    assert config is not None
    if name == "check-config":
        from agent import cli

        assert loaded is not None
        try:
            if show:
                sys.stdout.write(cli.describe(loaded))
            print(f"overlay-agent: configuration OK ({config.config_file or 'no config file'})")
            sys.stdout.flush()
        except BrokenPipeError:  # e.g. `check-config --show | head`: as the Python docs advise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0

    from agent import deferred

    codecache.hook_attrs()  # trio's attrs classes too (attrs is loaded only to run an agent)
    with deferred.glibc_sonames():  # trio's thread naming without an ldconfig child
        import trio  # not needed to check a configuration

    from agent import log as agent_log
    from agent import service
    from agent.overlay.extension import Overlay
    from agent.overlay.ipsec import IpsecAgent
    from gossip.wire import codec

    agent_log.setup(config.log_level, fmt=config.log_format)
    codec.set_packet_memo_bytes(DECODE_MEMO_BYTES)
    codec.set_part_cache_size(PART_CACHE_ENTRIES)
    overlay = Overlay()
    extensions: list[service.Extension] = [overlay, IpsecAgent(overlay)]
    if config.docker_plugin_socket:
        from agent.runtimes.docker.plugin import DockerPlugin  # h11 only when the plugin is on

        extensions.append(DockerPlugin(overlay, config.docker_plugin_socket))
    try:
        return trio.run(partial(service.run, config, extensions=extensions))
    except service.StartupError as exc:
        print(f"overlay-agent: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
        return 0


PARSER_MODULES = ("agent.cli", "agent.configload", "argparse", "gettext", "locale")
"""What only the command line and the configuration's loading need: dropped once a ``run``
is parsed (``_parse``)."""
REDEFERRED = ("shutil",)
"""Deferred modules (``agent.deferred``) that parsing loads and the agent does not use
afterwards: argparse's help formatter asks ``shutil.get_terminal_size`` for its width as
each flag is added. Put back behind a placeholder with the parser's modules (~0.15 MiB of
RSS); a later use loads it again (``subprocess`` looking up a program, tempfile's cleanup).
Measured: docs/performance.md, "Final figures for issue 17"."""


def _parse(argv: Sequence[str] | None) -> tuple[str, AgentConfig | None, Loaded | None, bool]:
    """The command, its configuration, the configuration with the origin of each value
    (None once dropped: see below) and ``--show``; exit 2 with one line on errors.

    For ``run`` in a process that had not loaded argparse (the daemon), the parser's
    modules (``PARSER_MODULES``: argparse with gettext and locale, which its messages
    load, and our flag table) are dropped once the configuration is built, and the deferred
    modules parsing loaded (``REDEFERRED``) are deferred again: ~0.65 MiB of an
    agent's RSS (docs/performance.md) for code that never runs again. They hold reference
    cycles (functions and their module's globals), so they go with one collection of the
    youngest generation, which holds only what was made since ``gc.freeze`` just before:
    the parser, its modules and the configuration (~1 ms; everything older is frozen
    and not walked, then unfrozen as it was). In a process that uses argparse itself (a
    test, a tool importing ``agent.__main__``) nothing is dropped.
    """
    import agent.config  # loaded before the freeze: it stays (the agent runs on it)
    from agent import deferred

    own = "argparse" not in sys.modules and "agent.cli" not in sys.modules
    redefer = [mod for mod in REDEFERRED if deferred.is_deferred(mod)]
    if own:
        gc.freeze()
    try:
        from agent import cli

        command = cli.parse_command(argv)
        config = command.loaded.config if command.loaded is not None else None
        if not (own and command.name == "run"):
            return command.name, config, command.loaded, command.show
        del command, cli  # nothing of theirs may stay referenced (``Loaded`` is theirs too)
        for mod in PARSER_MODULES:
            sys.modules.pop(mod, None)
        for mod in redefer:  # only argparse (dropped above) held the module parsing loaded
            if not deferred.is_deferred(mod):
                sys.modules.pop(mod, None)
                deferred.defer(mod)
        import agent

        for sub in ("cli", "configload"):
            vars(agent).pop(sub, None)
        gc.collect(0)
        return "run", config, None, False
    finally:
        if own:
            gc.unfreeze()


if __name__ == "__main__":
    sys.exit(main())
