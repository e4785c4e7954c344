"""Control socket permissions: mode 0660 + control_group, SO_PEERCRED checks, refusals.

Runs ``agentctl`` as ``nobody`` (uid 65534) with and without the control group as a
supplementary group; needs root to switch users.
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys

import pytest
import trio

from tests.agent.conftest import query, start_agent

NOBODY = 65534
GROUP = "users"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid nobody needs root")


def _gid() -> int:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        pytest.skip(f"no group {GROUP!r} on this machine")


# agentctl, with its modules loaded first, then as nobody (the interpreter may live in a
# directory nobody cannot read, e.g. under /root, so it cannot be exec'd as nobody).
AS_NOBODY = """
import locale, os, sys
from agent.ctl import main as ctl
ctl.build_parser().parse_args(["status"])  # loads argparse's lazy imports while still root
os.setgroups([int(g) for g in sys.argv[1].split(",") if g])
os.setgid(65534)
os.setuid(65534)
sys.exit(ctl.main(["--socket", sys.argv[2], "status", "--format", "json"]))
"""


async def _agentctl_as_nobody(sock: str, extra_groups: list[int]) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERLAY_AGENT_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return await trio.run_process(
        [sys.executable, "-c", AS_NOBODY, ",".join(map(str, extra_groups)), sock],
        capture_stdout=True, capture_stderr=True, check=False, stdin=subprocess.DEVNULL, env=env,
    )


async def test_group_members_only(sockdir: str) -> None:
    gid = _gid()
    os.chmod(sockdir, 0o755)  # nobody may traverse to the socket; the socket decides
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a", control_group=GROUP, control_gid=gid)
        st = os.stat(a.socket)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid

        # Not in the group: the file mode already refuses (EACCES), with a clear message.
        r = await _agentctl_as_nobody(a.socket, [])
        err = r.stderr.decode()
        assert r.returncode == 1 and err.count("\n") == 1, err
        assert "permission denied" in err and "control_group" in err and "Traceback" not in err

        # In the group (supplementary): allowed; SO_PEERCRED + /proc groups agree.
        r = await _agentctl_as_nobody(a.socket, [gid])
        assert r.returncode == 0, r.stderr.decode()
        assert b'"node": "a"' in r.stdout

        # A socket whose mode was loosened by hand: the agent itself still refuses.
        os.chmod(a.socket, 0o666)
        r = await _agentctl_as_nobody(a.socket, [])
        err = r.stderr.decode()
        assert r.returncode == 1 and err.count("\n") == 1, err
        assert f"uid {NOBODY} is neither root nor in group {GROUP} (control_group)" in err

        # The agent keeps serving, and counted the refusal.
        status = await query(a.socket, "status")
        assert status["control_refused"] == 1
        assert status["control_group"] == GROUP
        nursery.cancel_scope.cancel()


async def test_root_only_socket_refuses_others_even_when_loosened(sockdir: str) -> None:
    os.chmod(sockdir, 0o755)
    async with trio.open_nursery() as nursery:
        a = await start_agent(nursery, sockdir, "a")
        assert stat.S_IMODE(os.stat(a.socket).st_mode) == 0o600
        os.chmod(a.socket, 0o666)
        r = await _agentctl_as_nobody(a.socket, [])
        err = r.stderr.decode()
        assert r.returncode == 1 and "is not root (the control socket is root-only" in err, err
        assert len(await query(a.socket, "members")) == 1
        nursery.cancel_scope.cancel()
