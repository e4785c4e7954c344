"""The agent's configuration: ``AgentConfig``, the values every part of the agent runs with.

Owns: ``AgentConfig`` with its defaults and derived settings (``gossip_config``,
``limits_config``, ``keyring_path``), ``ConfigError`` and the shared constants (default
paths and ports, environment names, the choices of profile, log level and format).
Does not: read the file, the environment or the flags, or validate values
(``agent.configload`` builds an ``AgentConfig`` from them), open sockets, or touch
the state directory. The split: an agent keeps this module for good, and drops
``agent.configload`` with the command line once its configuration is built
(``agent.__main__``; ~0.1 MiB of RSS, docs/performance.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from agent.addresses import DEFAULT_PORT as DEFAULT_PORT
from agent.limits import Limits
from gossip.config import Config, Profile
from gossip.effects import Address

DEFAULT_CONFIG_FILE = "/etc/overlay-agent/agent.toml"
CONFIG_ENV = "OVERLAY_AGENT_CONFIG"
ENV_PREFIX = "OVERLAY_AGENT_"
SOCKET_ENV = "OVERLAY_AGENT_SOCKET"
"""agentctl's variable; the agent accepts it too, below OVERLAY_AGENT_CONTROL_SOCKET."""
DEFAULT_VXLAN_PORT = 4789
DEFAULT_METRICS_PORT = 9464
DEFAULT_CONTROL_SOCKET = "/run/overlay-agent/agent.sock"
DEFAULT_DOCKER_API_SOCKET = "/run/docker.sock"
DEFAULT_ROLE = "overlay-agent"
KEYRING_FILE_NAME = "keyring.json"
PROFILES = ("lan", "wan", "local")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("kv", "json")
MAX_SOCKET_PATH = 107
"""sun_path holds 108 bytes including the terminating NUL."""

class ConfigError(ValueError):
    """A bad configuration; the message is one line naming the key and the problem."""


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent runs with. Built by ``load``; tests may construct it directly."""

    node: str
    bind: Address
    advertise: Address | None = None
    """None: the bound address; a port of 0: the bound port."""
    join: tuple[Address, ...] = ()
    encrypt_keys: tuple[bytes, ...] = ()
    keyring_file: str | None = None
    """Where the keyring persists; None: ``<state_dir>/keyring.json`` (or nowhere)."""
    require_encryption: bool = True
    control_socket: str = DEFAULT_CONTROL_SOCKET
    control_group: str | None = None
    control_gid: int | None = None
    state_dir: str | None = None
    profile: Profile = "lan"
    gossip: Mapping[str, float | int | bool] = field(default_factory=dict)
    limits: Mapping[str, float | int] = field(default_factory=dict)
    """``limits.<name>`` overrides of ``agent.limits.Limits`` (docs/operations.md, "Limits")."""
    leave_on_terminate: bool = False
    tags: dict[str, str] = field(default_factory=lambda: {"role": DEFAULT_ROLE})
    log_level: str = "info"
    log_format: str = "kv"
    vxlan_port: int = DEFAULT_VXLAN_PORT
    underlay_interface: str | None = None
    underlay_mtu: int | None = None
    ipsec_rotation_interval: float = 12 * 3600.0
    """Seconds per IPsec key epoch of encrypted networks (agent/overlay/ipsec.py)."""
    dataplane: bool = True
    """False: tables only (networks are seen and made here), no kernel programming, no endpoints."""
    dns: bool = True
    """A DNS responder on each network's gateway address (agent/dns, docs/dns.md); false: none."""
    metrics_address: Address | None = None
    docker_plugin_socket: str | None = None
    """Serve the Docker network + IPAM plugin on this Unix socket (agent/runtimes/docker)."""
    docker_api_socket: str = DEFAULT_DOCKER_API_SOCKET
    """dockerd's API socket, asked for the names of containers on the plugin's networks."""
    config_file: str | None = None

    def gossip_config(self) -> Config:
        """The profile with the ``gossip.*`` overrides applied."""
        return Config.profile(self.profile).with_(**dict(self.gossip))

    def limits_config(self) -> Limits:
        """The agent's limits with the ``limits.*`` overrides applied."""
        return Limits().with_(**dict(self.limits))

    @property
    def keyring_path(self) -> str | None:
        if self.keyring_file:
            return self.keyring_file
        if self.state_dir:
            return os.path.join(self.state_dir, KEYRING_FILE_NAME)
        return None
