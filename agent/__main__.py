"""``overlay-agent`` / ``python -m agent``: flags -> logging -> ``service.run``.

Exit status: 0 after a requested stop (signal or ``agentctl leave``), 1 when the
agent cannot start (one line on stderr), 2 for bad flags.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import trio

from agent import cli, service
from agent import log as agent_log


def main(argv: Sequence[str] | None = None) -> int:
    opts = cli.parse_args(argv)
    agent_log.setup(opts.log_level)
    try:
        return trio.run(service.run, opts)
    except service.StartupError as exc:
        print(f"overlay-agent: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
        return 0


if __name__ == "__main__":
    sys.exit(main())
