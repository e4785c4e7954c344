"""packaging/: the systemd unit passes ``systemd-analyze verify`` and asks for what the agent needs."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "packaging" / "overlay-agent.service"
INSTALLED_PATH = "/usr/local/bin/overlay-agent"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=True, delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(UNIT)
    return parser


def test_unit_asks_for_notify_watchdog_and_hardening() -> None:
    svc = unit()["Service"]
    assert svc["Type"] == "notify"
    assert int(svc["WatchdogSec"]) > 0
    assert svc["Restart"] == "on-failure"
    assert svc["RestartPreventExitStatus"] == "2"  # a bad config does not restart-loop
    assert svc["ExecStart"] == f"{INSTALLED_PATH} --config /etc/overlay-agent/agent.toml"
    caps = set(svc["CapabilityBoundingSet"].split())
    # CAP_SYS_ADMIN: setns/unshare of network namespaces (tests/systemd proves each is needed).
    assert caps == {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_CHOWN"}
    assert "AmbientCapabilities" not in svc  # root: the bounding set is what it gets
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("StateDirectory", "overlay-agent"), ("RuntimeDirectory", "overlay-agent"),
                       ("RuntimeDirectoryPreserve", "yes"), ("RestrictNamespaces", "net"),
                       ("PrivateTmp", "yes")]:
        assert svc[key] == value, key
    assert "AF_NETLINK" in svc["RestrictAddressFamilies"]
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    # verify checks that ExecStart exists: point it at this checkout's program (or a stub).
    program = Path(sys.executable).parent / "overlay-agent"
    if not program.exists():
        program = tmp_path / "overlay-agent"
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
    text = UNIT.read_text().replace(INSTALLED_PATH, str(program))
    copy = tmp_path / "overlay-agent.service"
    copy.write_text(text)
    r = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True,
                       timeout=120, check=False, env=dict(os.environ, SYSTEMD_LOG_LEVEL="warning"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr  # no warnings either (unknown keys, bad values)
