"""Loading the agent's configuration: TOML file, environment and flags merged into ``AgentConfig``.

Owns: the set of configuration keys (one table, ``KEYS``, that the file, the
environment and ``agent.cli`` all follow), how each layer is read, the precedence
flags > environment (``OVERLAY_AGENT_*``) > file > defaults, and validation with
messages that name where the bad value came from (``--bind``,
``OVERLAY_AGENT_BIND`` or ``agent.toml: key 'bind'``) and what is wrong with it.
Does not: define ``AgentConfig`` or its defaults (``agent.config``), parse the command
line (``agent.cli`` hands over the flag values), open sockets, or touch the state
directory. Only start-up and ``check-config`` use it: the daemon drops it with the
command line once its configuration is built (``agent.__main__.PARSER_MODULES``).

Merging: a key set by a higher layer replaces the lower layers' value, lists
included (``join``, ``encrypt_keys``); ``tags`` and ``gossip`` tables merge key
by key. Text values (environment, flags) are converted to the key's type; TOML
values must already have it (``vxlan_port = "4789"`` is an error).
"""

from __future__ import annotations

import dataclasses
import functools
import grp
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from agent.addresses import UsageError, is_wildcard, parse_address
from agent.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_FILE,
    DEFAULT_CONTROL_SOCKET,
    DEFAULT_DOCKER_API_SOCKET,
    DEFAULT_METRICS_PORT,
    DEFAULT_PORT,
    DEFAULT_ROLE,
    DEFAULT_VXLAN_PORT,
    ENV_PREFIX,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_SOCKET_PATH,
    PROFILES,
    SOCKET_ENV,
    AgentConfig,
    ConfigError,
)
from agent.limits import Limits
from crypto.keyring import decode_key
from gossip.config import Config, Profile
from gossip.effects import Address
from gossip.serf.payloads import encode_tags
from gossip.tables.agenttag import AGENT_TAG, with_agent_tag


def _close_match(name: str, known: Mapping[str, object]) -> list[str]:
    """The suggestion for an unknown key. difflib is imported only here: an agent whose
    configuration is right never loads it (~80 KiB of code)."""
    import difflib

    return difflib.get_close_matches(name, list(known), n=1)


# Gossip timings an operator may override; the rest of gossip.Config is internal.
_POSITIVE = frozenset({
    "tcp_timeout", "retransmit_mult", "suspicion_mult", "suspicion_max_timeout_mult",
    "push_pull_interval", "probe_interval", "probe_timeout", "awareness_max_multiplier",
    "gossip_nodes", "gossip_interval", "gossip_to_the_dead_time", "udp_buffer_size",
    "reap_interval", "rejoin_interval", "rejoin_failed_for",
})
GOSSIP_KEYS: dict[str, type] = {
    f.name: type(f.default) for f in dataclasses.fields(Config)
}
"""``gossip.<name>`` keys: every gossip.Config field with its type (float, int or bool)."""
LIMIT_KEYS: dict[str, type] = Limits.fields()
"""``limits.<name>`` keys: every ``agent.limits.Limits`` field with its type (int or float)."""


# -- raw values and where they came from ---------------------------------------------


@dataclass(frozen=True)
class Raw:
    value: Any
    origin: str
    """How to name this value in a message: ``--bind``, ``OVERLAY_AGENT_BIND``, ``f: key 'bind'``."""
    textual: bool
    """Came from text (environment, flags): convert; else a typed TOML value."""


Layer = dict[str, Raw]


class _Problem(Exception):
    """A value's problem, without its origin (added by the caller)."""


@dataclass(frozen=True)
class Key:
    name: str
    kind: str
    """str, int, bool, list, tags or address (kinds decide conversion of text)."""
    help: str
    flag: str | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


KEYS: dict[str, Key] = {k.name: k for k in [
    Key("node", "str", "node name (default: the host name)", "--node"),
    Key("bind", "str", "gossip address IP[:PORT], UDP and TCP (IPv4 or IPv6; port 0 = any)", "--bind"),
    Key("advertise", "str", "address peers use to reach us (needed when bind is 0.0.0.0 or ::)", "--advertise"),
    Key("join", "list", "seed addresses to join at start", "--join"),
    Key("profile", "str", "gossip timing profile: lan, wan or local", "--profile"),
    Key("gossip", "table", "overrides of gossip timings (gossip.probe_interval = 1.0, ...)", "--gossip"),
    Key("limits", "table", "overrides of the agent's limits (limits.stream_slots = 128, ...)", "--limit"),
    Key("encrypt_keys", "list", "gossip keys in base64 (16/24/32 bytes); the first encrypts", "--encrypt-key"),
    Key("keyring_file", "str", "where the keyring persists (default: <state_dir>/keyring.json)", "--keyring-file"),
    Key("require_encryption", "bool", "with keys: refuse plaintext gossip (false during a roll-out)",
        "--require-encryption"),
    Key("vxlan_port", "int", "UDP port of VXLAN traffic between hosts", "--vxlan-port"),
    Key("underlay_interface", "str", "interface of the underlay network (default: by route)",
        "--underlay-interface"),
    Key("underlay_mtu", "int", "MTU of the underlay network (default: the interface's)", "--underlay-mtu"),
    Key("dataplane", "bool", "program the kernel (VXLAN, bridges, FDB, neighbours) and host endpoints",
        "--dataplane"),
    Key("dns", "bool", "answer container names on each network's gateway address, UDP/TCP 53 "
        "(default true; docs/dns.md)", "--dns"),
    Key("ipsec_rotation_interval", "float", "seconds between IPsec key rotations of encrypted networks "
        "(default 43200 = 12 h; every agent of a cluster must use the same value)",
        "--ipsec-rotation-interval"),
    Key("state_dir", "str", "directory for persistent state (default: $STATE_DIRECTORY)", "--state-dir"),
    Key("control_socket", "str", "control API Unix socket", "--control-socket"),
    Key("control_group", "str", "group allowed to use the control socket (mode 0660)", "--control-group"),
    Key("metrics_address", "str", "serve Prometheus metrics on IP[:PORT] (default: off)", "--metrics-address"),
    Key("docker_plugin_socket", "str", "serve the Docker network + IPAM plugin on this Unix socket, e.g. "
        "/run/docker/plugins/overlay-agent.sock (default: off)", "--docker-plugin-socket"),
    Key("docker_api_socket", "str", "dockerd's API socket, asked for container names by the Docker plugin "
        "(default: /run/docker.sock)", "--docker-api-socket"),
    Key("log_level", "str", "debug, info, warning or error", "--log-level"),
    Key("log_format", "str", "kv (key=value lines) or json", "--log-format"),
    Key("leave_on_terminate", "bool", "announce a graceful leave on SIGTERM/SIGINT", "--leave-on-terminate"),
    Key("tags", "table", "node tags advertised to peers (serf tags)", "--tag"),
]}


# -- layers -----------------------------------------------------------------------------


def _file_origin(path: str, key: str) -> str:
    return f"{path}: key '{key}'"


def read_file(path: str) -> Layer:
    """The TOML file as a layer. Raises ConfigError (unreadable, bad TOML, unknown key)."""
    import tomllib  # only when there is a file: it costs ~1.4 MiB of RSS

    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None
    layer: Layer = {}
    for name, value in doc.items():
        if name not in KEYS:
            hint = _close_match(name, KEYS)
            suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"{_file_origin(path, name)}: unknown key{suffix}")
        if KEYS[name].kind == "table":
            if not isinstance(value, dict):
                raise ConfigError(f"{_file_origin(path, name)}: expected a table ([{name}])")
            for sub, subvalue in value.items():
                origin = _file_origin(path, f"{name}.{sub}")
                layer[f"{name}.{sub}"] = Raw(subvalue, origin, textual=False)
        else:
            layer[name] = Raw(value, _file_origin(path, name), textual=False)
    return layer


def read_env(environ: Mapping[str, str]) -> Layer:
    """``OVERLAY_AGENT_<KEY>`` variables as a layer (lists comma-separated, tags k=v,k=v)."""
    layer: Layer = {}
    if environ.get(SOCKET_ENV):
        layer["control_socket"] = Raw(environ[SOCKET_ENV], SOCKET_ENV, textual=True)
    for key in KEYS.values():
        if key.kind == "table":
            continue
        text = environ.get(key.env)
        if text is not None and (text.strip() or key.kind != "list"):
            layer[key.name] = Raw(text, key.env, textual=True)
    tags = environ.get(KEYS["tags"].env)
    if tags:
        for i, item in enumerate(_split(tags)):
            k, v = _tag_pair(item, f"{KEYS['tags'].env} item {i + 1}")
            layer[f"tags.{k}"] = Raw(v, KEYS["tags"].env, textual=True)
    for table, names in (("gossip", GOSSIP_KEYS), ("limits", LIMIT_KEYS)):
        for name in names:
            var = f"{ENV_PREFIX}{table.upper()}_{name.upper()}"
            if var in environ:
                layer[f"{table}.{name}"] = Raw(environ[var], var, textual=True)
    return layer


def flag_layer(values: Mapping[str, Any]) -> Layer:
    """Flag values (None = not given) keyed by config key; lists are lists of text."""
    layer: Layer = {}
    for name, value in values.items():
        if value is None:
            continue
        key = KEYS[name]
        if name == "tags":
            for text in value:
                k, v = _tag_pair(text, f"--tag {text!r}")
                layer[f"tags.{k}"] = Raw(v, "--tag", textual=True)
        elif name in ("gossip", "limits"):
            flag = key.flag
            for text in value:
                k, sep, v = text.partition("=")
                if not sep or not k.strip():
                    raise ConfigError(f"{flag} {text!r}: expected NAME=VALUE")
                layer[f"{name}.{k.strip()}"] = Raw(v.strip(), f"{flag} {k.strip()}", textual=True)
        else:
            assert key.flag is not None
            layer[name] = Raw(value, key.flag, textual=True)
    return layer


def _split(text: str) -> list[str]:
    return [p for p in text.replace(",", " ").split() if p]


def _tag_pair(text: str, origin: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k.strip():
        raise ConfigError(f"{origin}: expected KEY=VALUE")
    return k.strip(), v


def default_config_file(environ: Mapping[str, str]) -> tuple[str, bool]:
    """(path, explicit): ``$OVERLAY_AGENT_CONFIG`` or the default (optional) file."""
    if environ.get(CONFIG_ENV):
        return environ[CONFIG_ENV], True
    return DEFAULT_CONFIG_FILE, False


def merge(*layers: Layer) -> Layer:
    """Later layers win, key by key (``tags.x`` and ``gossip.x`` are separate keys)."""
    merged: Layer = {}
    for layer in layers:
        for name, raw in layer.items():
            if name in KEYS and KEYS[name].kind == "list":
                merged.pop(name, None)
            merged[name] = raw
    return merged


# -- conversions (raise _Problem) ---------------------------------------------------------------


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(v), type(v).__name__)


def _as_str(raw: Raw) -> str:
    if not isinstance(raw.value, str):
        raise _Problem(f"expected a string, got {_type_name(raw.value)}")
    return raw.value.strip()


def _as_int(raw: Raw) -> int:
    v = raw.value
    if raw.textual and isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            raise _Problem(f"expected an integer, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Problem(f"expected an integer, got {_type_name(v)}")
    return v


def _as_float(raw: Raw) -> float:
    v = raw.value
    if raw.textual and isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            raise _Problem(f"expected a number, got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Problem(f"expected a number, got {_type_name(v)}")
    return float(v)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _as_bool(raw: Raw) -> bool:
    v = raw.value
    if isinstance(v, bool):
        return v
    if raw.textual and isinstance(v, str):
        if v.strip().lower() in _TRUE:
            return True
        if v.strip().lower() in _FALSE:
            return False
        raise _Problem(f"expected true or false, got {v!r}")
    raise _Problem(f"expected true or false, got {_type_name(v)}")


def _as_list(raw: Raw) -> list[tuple[str, str]]:
    """Items with their own origins (``--join #2``); text is split on commas/spaces."""
    v = raw.value
    if raw.textual and isinstance(v, str):
        items = _split(v)
    elif isinstance(v, list):
        items = v
    else:
        raise _Problem(f"expected an array of strings, got {_type_name(v)}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise _Problem(f"item {i + 1}: expected a string, got {_type_name(item)}")
        out.append((item.strip(), f"{raw.origin} #{i + 1}"))
    return out


def _check_range(value: float, lo: float | None, hi: float | None, what: str) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        low = "" if lo is None else f"{lo:g}"
        high = "" if hi is None else f"{hi:g}"
        raise _Problem(f"{what} must be in {low}..{high} (got {value:g})")


# -- building the config ----------------------------------------------------------------------


class _Builder:
    def __init__(self, layer: Layer) -> None:
        self.layer = layer

    def get(self, name: str) -> Raw | None:
        return self.layer.get(name)

    def convert(self, name: str, fn: Callable[[Raw], Any]) -> Any:
        raw = self.layer.get(name)
        if raw is None:
            return None
        return self.run(raw, fn)

    @staticmethod
    def run(raw: Raw, fn: Callable[[Raw], Any]) -> Any:
        try:
            return fn(raw)
        except (_Problem, UsageError, ValueError) as exc:
            raise ConfigError(f"{raw.origin}: {exc}") from None

    def table(self, prefix: str) -> dict[str, Raw]:
        n = len(prefix) + 1
        return {k[n:]: r for k, r in self.layer.items() if k.startswith(prefix + ".")}


def _node_name(raw: Raw) -> str:
    name = _as_str(raw)
    if not name or len(name) > 128 or any(ch.isspace() or not ch.isprintable() for ch in name):
        raise _Problem(f"{name!r}: expected 1-128 printable characters without spaces")
    return name


def _choice(options: Sequence[str]) -> Callable[[Raw], str]:
    def check(raw: Raw) -> str:
        v = _as_str(raw).lower()
        if v not in options:
            raise _Problem(f"{raw.value!r} is not one of {', '.join(options)}")
        return v

    return check


def _path(raw: Raw) -> str:
    v = _as_str(raw)
    if not v:
        raise _Problem("must not be empty")
    if "\0" in v:
        raise _Problem("must not contain NUL")
    return v


def _socket_path(raw: Raw) -> str:
    v = _path(raw)
    if len(os.fsencode(v)) > MAX_SOCKET_PATH:
        raise _Problem(f"path too long for a Unix socket ({len(os.fsencode(v))} > {MAX_SOCKET_PATH} bytes)")
    return v


def _group(raw: Raw) -> tuple[str, int]:
    v = raw.value
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    if not isinstance(v, str) or not v.strip():
        raise _Problem("expected a group name or number")
    v = v.strip()
    try:
        entry = grp.getgrgid(int(v)) if v.isdigit() else grp.getgrnam(v)
    except (KeyError, OverflowError):
        if v.isdigit():
            return v, int(v)  # a numeric gid need not have a name
        raise _Problem(f"no such group {v!r}") from None
    return entry.gr_name, entry.gr_gid


def _ifname(raw: Raw) -> str:
    v = _as_str(raw)
    if not v or len(v) > 15 or v in (".", "..") or any(ch in "/:" or ch.isspace() for ch in v):
        raise _Problem(f"{v!r} is not a valid interface name (1-15 characters, no '/', ':' or spaces)")
    return v


def _gossip_value(name: str, raw: Raw) -> float | int | bool:
    kind = GOSSIP_KEYS[name]
    value: float | int | bool
    if kind is bool:
        return _as_bool(raw)
    if kind is int:
        value = _as_int(raw)
        _check_range(value, 1 if name in _POSITIVE else 0, None, "value")
        if name == "udp_buffer_size":
            _check_range(value, 512, 65507, "value")
        return value
    value = _as_float(raw)
    if name in _POSITIVE:
        if not value > 0:
            raise _Problem(f"must be a positive number of seconds (got {value:g})")
    elif value < 0:
        raise _Problem(f"must not be negative (got {value:g})")
    if value > 7 * 86400 and name not in ("reap_interval", "rejoin_failed_for"):
        raise _Problem(f"unreasonably large (got {value:g} s)")
    return value


def build(layer: Layer, *, config_file: str | None = None,
          environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Validate a merged layer into an AgentConfig. Raises ConfigError (one line)."""
    env = os.environ if environ is None else environ
    b = _Builder(layer)

    node = b.convert("node", _node_name) or _node_name(Raw(socket.gethostname(), "host name", True))

    bind_raw = b.get("bind")
    if bind_raw is None:
        where = f"key 'bind' in {config_file}" if config_file else "key 'bind' in the config file"
        raise ConfigError(f"bind: required (set --bind, OVERLAY_AGENT_BIND or {where})")
    bind = b.run(bind_raw, lambda r: parse_address(_as_str(r), DEFAULT_PORT, allow_zero_port=True))
    advertise: Address | None = None
    adv_raw = b.get("advertise")
    if adv_raw is not None:
        # Without a port, peers use the port we bind (known only after binding port 0).
        advertise = b.run(adv_raw, lambda r: parse_address(_as_str(r), 0, allow_zero_port=True))
        assert advertise is not None
        if is_wildcard(advertise[0]):
            raise ConfigError(f"{adv_raw.origin}: {adv_raw.value!r} must be a specific address")
        bind_ip, adv_ip = ipaddress.ip_address(bind[0]), ipaddress.ip_address(advertise[0])
        dual_stack = bind_ip.version == 6 and bind_ip.is_unspecified
        if bind_ip.version != adv_ip.version and not dual_stack:
            raise ConfigError(f"{adv_raw.origin}: IPv{adv_ip.version} address but bind "
                              f"{bind_raw.value!r} is IPv{bind_ip.version} (use bind = \"::\" for both)")
    elif is_wildcard(bind[0]):
        raise ConfigError(f"{bind_raw.origin}: {bind_raw.value!r} is a wildcard address: "
                          "set advertise too (--advertise, OVERLAY_AGENT_ADVERTISE or key 'advertise')")

    join: list[Address] = []
    join_raw = b.get("join")
    if join_raw is not None:
        for text, origin in b.run(join_raw, _as_list):
            join.append(b.run(Raw(text, origin, True), lambda r: parse_address(r.value, DEFAULT_PORT)))

    keys: list[bytes] = []
    keys_raw = b.get("encrypt_keys")
    if keys_raw is not None:
        for text, origin in b.run(keys_raw, _as_list):
            keys.append(b.run(Raw(text, origin, True), lambda r: decode_key(r.value)))

    profile = b.convert("profile", _choice(PROFILES)) or "lan"
    gossip: dict[str, float | int | bool] = {}
    for name, raw in sorted(b.table("gossip").items()):
        if name not in GOSSIP_KEYS:
            hint = _close_match(name, GOSSIP_KEYS)
            suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"{raw.origin}: unknown gossip setting{suffix}")
        gossip[name] = b.run(raw, functools.partial(_gossip_value, name))
    effective = Config.profile(profile).with_(**gossip)
    if effective.probe_timeout > effective.probe_interval:
        culprit = b.get("gossip.probe_timeout") or b.get("gossip.probe_interval") or b.get("profile")
        origin = culprit.origin if culprit else "gossip.probe_timeout"
        raise ConfigError(f"{origin}: probe_timeout ({effective.probe_timeout:g} s) must not exceed "
                          f"probe_interval ({effective.probe_interval:g} s)")

    limit_values: dict[str, float | int] = {}
    for name, raw in sorted(b.table("limits").items()):
        if name not in LIMIT_KEYS:
            hint = _close_match(name, LIMIT_KEYS)
            suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"{raw.origin}: unknown limit{suffix}")
        limit_values[name] = b.run(raw, _as_int if LIMIT_KEYS[name] is int else _as_float)
    try:
        Limits().with_(**limit_values)
    except ValueError as exc:
        origins = sorted(r.origin for r in b.table("limits").values())
        raise ConfigError(f"{', '.join(origins)}: {exc}") from None

    tags = {"role": DEFAULT_ROLE}
    tag_raws = b.table("tags")
    for name, raw in tag_raws.items():
        if name in KEYS and not raw.textual:
            raise ConfigError(f"{raw.origin}: a tag named like the top-level key '{name}': did you put it "
                              f"after [tags]? (TOML puts every key after a [table] header into that table)")
        if name == AGENT_TAG:
            raise ConfigError(f"{raw.origin}: the tag '{AGENT_TAG}' is reserved (the agent sets it to tell "
                              f"its own members from serf's)")
        tags[name] = b.run(raw, lambda r: r.value if isinstance(r.value, str) else _as_str(r))
    try:
        with_agent_tag(encode_tags(tags))  # the 512-byte node meta limit, agent tag included
    except ValueError as exc:
        origins = sorted({r.origin for r in tag_raws.values()})
        raise ConfigError(f"{', '.join(origins) or 'tags'}: {exc}") from None

    vxlan_port = b.convert("vxlan_port", _as_int)
    if vxlan_port is not None:
        b.run(b.layer["vxlan_port"], lambda r: _check_range(vxlan_port, 1, 65535, "port"))
    mtu = b.convert("underlay_mtu", _as_int)
    rotation = b.convert("ipsec_rotation_interval", _as_float)
    if rotation is not None:
        b.run(b.layer["ipsec_rotation_interval"], lambda r: _check_range(rotation, 1, 30 * 86400, "interval"))
    if mtu is not None:
        b.run(b.layer["underlay_mtu"], lambda r: _check_range(mtu, 1280, 65535, "MTU"))

    control_group: str | None = None
    control_gid: int | None = None
    group = b.convert("control_group", _group)
    if group is not None:
        control_group, control_gid = group

    metrics: Address | None = None
    metrics_raw = b.get("metrics_address")
    if metrics_raw is not None:
        metrics = b.run(metrics_raw, lambda r: parse_address(_as_str(r), DEFAULT_METRICS_PORT,
                                                             allow_zero_port=True))

    state_dir = b.convert("state_dir", _path)
    if state_dir is None and env.get("STATE_DIRECTORY"):
        state_dir = env["STATE_DIRECTORY"].split(":")[0]  # systemd's StateDirectory=

    return AgentConfig(
        node=node,
        bind=bind,
        advertise=advertise,
        join=tuple(join),
        encrypt_keys=tuple(keys),
        keyring_file=b.convert("keyring_file", _path),
        require_encryption=_default(b.convert("require_encryption", _as_bool), True),
        control_socket=b.convert("control_socket", _socket_path) or DEFAULT_CONTROL_SOCKET,
        control_group=control_group,
        control_gid=control_gid,
        state_dir=state_dir,
        profile=cast(Profile, profile),
        gossip=gossip,
        limits=limit_values,
        leave_on_terminate=_default(b.convert("leave_on_terminate", _as_bool), False),
        tags=tags,
        log_level=b.convert("log_level", _choice(LOG_LEVELS)) or "info",
        log_format=b.convert("log_format", _choice(LOG_FORMATS)) or "kv",
        vxlan_port=_default(vxlan_port, DEFAULT_VXLAN_PORT),
        underlay_interface=b.convert("underlay_interface", _ifname),
        underlay_mtu=mtu,
        dataplane=_default(b.convert("dataplane", _as_bool), True),
        dns=_default(b.convert("dns", _as_bool), True),
        ipsec_rotation_interval=_default(rotation, 12 * 3600.0),
        metrics_address=metrics,
        docker_plugin_socket=b.convert("docker_plugin_socket", _socket_path),
        docker_api_socket=b.convert("docker_api_socket", _socket_path) or DEFAULT_DOCKER_API_SOCKET,
        config_file=config_file,
    )


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


@dataclass(frozen=True)
class Loaded:
    config: AgentConfig
    origins: dict[str, str]
    """Key -> where its value came from (for ``check-config --show``)."""


def load(
    flags: Mapping[str, Any],
    *,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Loaded:
    """Defaults < file < environment < flags. ``config_file`` None: $OVERLAY_AGENT_CONFIG,
    else the default file if it exists. Raises ConfigError."""
    env = os.environ if environ is None else environ
    explicit = config_file is not None
    path = config_file
    if path is None:
        path, explicit = default_config_file(env)
    file_layer: Layer = {}
    used_file: str | None = None
    if explicit or os.path.exists(path):
        file_layer = read_file(path)
        used_file = path
    layer = merge(file_layer, read_env(env), flag_layer(flags))
    config = build(layer, config_file=used_file, environ=env)
    origins = {name: raw.origin for name, raw in sorted(layer.items())}
    return Loaded(config, origins)
