"""``python -m tests.systemd.esp_peer FLAGS``: the agent, told that this kernel has ESP.

Owns nothing but the override: the peer of the systemd machine runs the normal agent
(same flags as ``overlay-agent``) with ``Overlay(ipsec_probe=lambda: None)``, so it
accepts ``network create --encrypted`` on a host kernel without ESP. That is all the
systemd tier needs: once an encrypted network exists in the cluster, the agent under
systemd makes its epoch keys and saves them in its runtime directory, and the test
checks that file across restarts. No SA is ever installed (neither host has an
endpoint on the encrypted network, and this kernel could not hold one): the VM tier
(tests/vm) tests IPsec traffic.
Does not: anything else ``agent.__main__`` does not (no check-config, no version).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial


def main(argv: Sequence[str] | None = None) -> int:
    from agent import cli, deferred
    from agent import log as agent_log

    command = cli.parse_command(argv)
    assert command.loaded is not None
    config = command.loaded.config
    deferred.defer(*deferred.AGENT_DEFERRED)
    import trio

    from agent import service
    from agent.overlay.extension import Overlay
    from agent.overlay.ipsec import IpsecAgent

    agent_log.setup(config.log_level, fmt=config.log_format)
    overlay = Overlay(ipsec_probe=lambda: None)
    try:
        return trio.run(partial(service.run, config, extensions=[overlay, IpsecAgent(overlay)]))
    except service.StartupError as exc:
        print(f"esp_peer: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
