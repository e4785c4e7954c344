"""Configuration: TOML file, environment and flags; precedence; validation; check-config."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import __main__ as agent_main
from agent import cli, configload
from agent import config as cfg
from gossip.config import Config

KEY16 = base64.b64encode(bytes(range(16))).decode()
KEY32 = base64.b64encode(bytes(range(32))).decode()
REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(flags: list[str], env: dict[str, str] | None = None, config_file: str | None = None) -> cfg.AgentConfig:
    """Flags as the CLI parses them, with an explicit environment."""
    ns = cli.build_parser().parse_args(flags)
    values = {name: getattr(ns, name) for name in configload.KEYS}
    return configload.load(values, config_file=config_file or ns.config, environ=env or {}).config


FULL = f"""
node = "h1"
bind = "[fd00::1]:7000"
advertise = "fd00::1"
join = ["fd00::2", "[fd00::3]:7001"]
profile = "wan"
encrypt_keys = ["{KEY32}", "{KEY16}"]
keyring_file = "/etc/overlay-agent/keyring.json"
require_encryption = false
vxlan_port = 4790
underlay_interface = "eth1"
underlay_mtu = 9000
state_dir = "/var/lib/oa"
control_socket = "/run/oa/agent.sock"
control_group = "0"
metrics_address = "127.0.0.1"
log_level = "debug"
log_format = "json"
leave_on_terminate = true

[tags]
rack = "r1"

[gossip]
probe_interval = 5.5
suspicion_mult = 5
lifeguard = false
"""


def test_every_key_from_the_file(tmp_path: Path) -> None:
    c = load(["--config", write(tmp_path, FULL)])
    assert c.node == "h1"
    assert c.bind == ("fd00::1", 7000)
    assert c.advertise == ("fd00::1", 0)
    assert c.join == (("fd00::2", 7946), ("fd00::3", 7001))
    assert c.profile == "wan"
    assert c.encrypt_keys == (bytes(range(32)), bytes(range(16)))
    assert c.keyring_path == "/etc/overlay-agent/keyring.json"
    assert c.require_encryption is False
    assert c.vxlan_port == 4790
    assert c.underlay_interface == "eth1" and c.underlay_mtu == 9000
    assert c.state_dir == "/var/lib/oa"
    assert c.control_socket == "/run/oa/agent.sock"
    assert c.control_gid == 0 and c.control_group == "root"
    assert c.metrics_address == ("127.0.0.1", cfg.DEFAULT_METRICS_PORT)
    assert (c.log_level, c.log_format) == ("debug", "json")
    assert c.leave_on_terminate is True
    assert c.tags == {"role": "overlay-agent", "rack": "r1"}
    g = c.gossip_config()
    assert g == Config.wan().with_(probe_interval=5.5, suspicion_mult=5, lifeguard=False)
    assert c.config_file == str(tmp_path / "agent.toml")


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
bind = "10.0.0.1"
node = "from-file"
profile = "wan"
join = ["10.0.0.2", "10.0.0.3"]
log_level = "error"
[tags]
a = "file"
b = "file"
[gossip]
probe_interval = 3.0
probe_timeout = 1.0
""")
    env = {"OVERLAY_AGENT_NODE": "from-env", "OVERLAY_AGENT_PROFILE": "local",
           "OVERLAY_AGENT_JOIN": "10.0.0.9", "OVERLAY_AGENT_TAGS": "b=env,c=env",
           "OVERLAY_AGENT_GOSSIP_PROBE_INTERVAL": "2", "OVERLAY_AGENT_LOG_LEVEL": "warning"}
    c = load(["--config", path, "--node", "from-flag", "--tag", "c=flag", "--gossip", "probe_timeout=0.5"], env)
    assert c.node == "from-flag"  # flag > env > file
    assert c.profile == "local"  # env > file
    assert c.log_level == "warning"
    assert c.bind == ("10.0.0.1", 7946)  # file only
    assert c.join == (("10.0.0.9", 7946),)  # a list is replaced as a whole
    assert c.tags == {"role": "overlay-agent", "a": "file", "b": "env", "c": "flag"}  # tags merge
    assert c.gossip == {"probe_interval": 2.0, "probe_timeout": 0.5}  # gossip merges per key


def test_defaults_and_optional_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(configload, "DEFAULT_CONFIG_FILE", str(tmp_path / "absent.toml"))
    c = configload.load({"bind": "127.0.0.1"}, environ={}).config
    assert c.config_file is None  # a missing default file is fine
    assert c.node  # the host name
    assert c.control_socket == cfg.DEFAULT_CONTROL_SOCKET
    assert c.state_dir is None and c.keyring_path is None
    assert c.metrics_address is None
    assert c.vxlan_port == 4789 and c.profile == "lan" and c.require_encryption
    # The default file is read when it exists; $OVERLAY_AGENT_CONFIG names another.
    default = tmp_path / "absent.toml"
    default.write_text('node = "dflt"\n')
    assert configload.load({"bind": "127.0.0.1"}, environ={}).config.node == "dflt"
    other = write(tmp_path, 'node = "via-env"\n')
    assert configload.load({"bind": "127.0.0.1"}, environ={"OVERLAY_AGENT_CONFIG": other}).config.node == "via-env"


def test_systemd_state_directory_is_the_default_state_dir() -> None:
    c = configload.load({"bind": "127.0.0.1"}, environ={"STATE_DIRECTORY": "/var/lib/overlay-agent"}).config
    assert c.state_dir == "/var/lib/overlay-agent"
    assert c.keyring_path == "/var/lib/overlay-agent/keyring.json"
    c = configload.load({"bind": "127.0.0.1", "state_dir": "/srv/x"},
                 environ={"STATE_DIRECTORY": "/var/lib/overlay-agent"}).config
    assert c.state_dir == "/srv/x"


def test_env_values_are_converted() -> None:
    env = {"OVERLAY_AGENT_BIND": "127.0.0.1:0", "OVERLAY_AGENT_LEAVE_ON_TERMINATE": "yes",
           "OVERLAY_AGENT_REQUIRE_ENCRYPTION": "off", "OVERLAY_AGENT_VXLAN_PORT": "8472",
           "OVERLAY_AGENT_ENCRYPT_KEYS": f"{KEY16},{KEY32}", "OVERLAY_AGENT_SOCKET": "/tmp/ctl.sock",
           "OVERLAY_AGENT_GOSSIP_LIFEGUARD": "false"}
    c = configload.load({}, environ=env).config
    assert c.bind == ("127.0.0.1", 0)
    assert c.leave_on_terminate is True and c.require_encryption is False
    assert c.vxlan_port == 8472
    assert c.encrypt_keys == (bytes(range(16)), bytes(range(32)))
    assert c.control_socket == "/tmp/ctl.sock"  # agentctl's variable works for the agent too
    assert c.gossip == {"lifeguard": False}
    env["OVERLAY_AGENT_CONTROL_SOCKET"] = "/tmp/other.sock"
    assert configload.load({}, environ=env).config.control_socket == "/tmp/other.sock"


def test_example_config_in_packaging_is_valid() -> None:
    loaded = configload.load({}, config_file=str(REPO / "packaging" / "agent.toml"), environ={})
    assert loaded.config.state_dir == "/var/lib/overlay-agent"
    assert loaded.config.control_socket == "/run/overlay-agent/agent.sock"


# -- bad configurations: one line naming the key, exit 2, no traceback --------------------------

BAD_CONFIGS: list[tuple[str, str]] = [
    ('bind = "10.0.0.1"\nbnid = "x"\n', "key 'bnid': unknown key (did you mean 'bind'?)"),
    ('node = "n"\n', "bind: required"),
    ('bind = "nonsense"\n', "key 'bind'"),
    ('bind = "10.0.0.1:99999"\n', "key 'bind'"),
    ('bind = 7946\n', "key 'bind': expected a string"),
    ('bind = "0.0.0.0"\n', "key 'bind'"),
    ('bind = "10.0.0.1"\nadvertise = "::"\n', "key 'advertise'"),
    ('bind = "10.0.0.1"\nadvertise = "fd00::1"\n', "key 'advertise': IPv6 address but bind"),
    ('bind = "10.0.0.1"\njoin = "10.0.0.2"\n', "key 'join': expected an array"),
    ('bind = "10.0.0.1"\njoin = ["10.0.0.2", "example.org"]\n', "key 'join' #2"),
    ('bind = "10.0.0.1"\nnode = "two words"\n', "key 'node'"),
    ('bind = "10.0.0.1"\nprofile = "moon"\n', "key 'profile': 'moon' is not one of lan, wan, local"),
    ('bind = "10.0.0.1"\nencrypt_keys = ["AAAA"]\n', "key 'encrypt_keys' #1"),
    ('bind = "10.0.0.1"\nencrypt_keys = ["not base64!"]\n', "key 'encrypt_keys' #1"),
    ('bind = "10.0.0.1"\nrequire_encryption = "no"\n', "key 'require_encryption': expected true or false"),
    ('bind = "10.0.0.1"\nvxlan_port = "4789"\n', "key 'vxlan_port': expected an integer"),
    ('bind = "10.0.0.1"\nvxlan_port = 0\n', "key 'vxlan_port': port must be in 1..65535"),
    ('bind = "10.0.0.1"\nunderlay_mtu = 576\n', "key 'underlay_mtu': MTU must be in 1280..65535"),
    ('bind = "10.0.0.1"\nunderlay_interface = "a/b"\n', "key 'underlay_interface'"),
    ('bind = "10.0.0.1"\nstate_dir = ""\n', "key 'state_dir': must not be empty"),
    ('bind = "10.0.0.1"\ncontrol_socket = "/' + "x" * 120 + '"\n', "key 'control_socket': path too long"),
    ('bind = "10.0.0.1"\ncontrol_group = "no-such-group-xyz"\n', "key 'control_group': no such group"),
    ('bind = "10.0.0.1"\nmetrics_address = "localhost:9464"\n', "key 'metrics_address'"),
    ('bind = "10.0.0.1"\nlog_level = "verbose"\n', "key 'log_level'"),
    ('bind = "10.0.0.1"\nlog_format = "xml"\n', "key 'log_format'"),
    ('bind = "10.0.0.1"\nleave_on_terminate = 1\n', "key 'leave_on_terminate': expected true or false"),
    ('bind = "10.0.0.1"\ntags = "rack=r1"\n', "key 'tags': expected a table"),
    ('bind = "10.0.0.1"\n[tags]\nrack = 1\n', "key 'tags.rack': expected a string"),
    ('bind = "10.0.0.1"\n[tags]\nbig = "' + "x" * 600 + '"\n', "key 'tags.big'"),
    ('bind = "10.0.0.1"\n[tags]\nbig = "' + "x" * 490 + '"\n', "key 'tags.big'"),  # + the agent tag
    ('bind = "10.0.0.1"\n[tags]\n"overlay-tables" = "1"\n', "key 'tags.overlay-tables': the tag 'overlay-tables' is reserved"),
    ('bind = "10.0.0.1"\n[gossip]\nprobe_intervall = 1.0\n',
     "key 'gossip.probe_intervall': unknown gossip setting (did you mean 'probe_interval'?)"),
    ('bind = "10.0.0.1"\n[gossip]\nprobe_interval = -1\n', "key 'gossip.probe_interval': must be a positive"),
    ('bind = "10.0.0.1"\n[gossip]\nsuspicion_mult = 0\n', "key 'gossip.suspicion_mult'"),
    ('bind = "10.0.0.1"\n[gossip]\nlifeguard = "yes"\n', "key 'gossip.lifeguard': expected true or false"),
    ('bind = "10.0.0.1"\n[gossip]\nprobe_timeout = 5.0\n',
     "key 'gossip.probe_timeout': probe_timeout (5 s) must not exceed probe_interval (1 s)"),
    ('bind = "10.0.0.1"\n[gossip]\nudp_buffer_size = 100\n', "key 'gossip.udp_buffer_size'"),
    ('bind = "10.0.0.1"\n[tags]\nrack = "r1"\nstate_dir = "/var/lib/x"\n', "key 'tags.state_dir': a tag named"),
    ('bind = "10.0.0.1"\nnode = \n', "invalid TOML"),
    ('bind = "10.0.0.1"\n[tags\n', "invalid TOML"),
]


@pytest.mark.parametrize(("text", "needle"), BAD_CONFIGS)
def test_bad_config_is_one_line_naming_the_key(
    tmp_path: Path, text: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SystemExit) as info:
        agent_main.main(["check-config", "--config", path])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err
    assert err.count("\n") == 1, err
    assert err.startswith("overlay-agent: error: "), err
    assert needle in err, err
    if "required" not in needle:
        assert path in err, err  # says which file
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"OVERLAY_AGENT_VXLAN_PORT": "x"}, "OVERLAY_AGENT_VXLAN_PORT: expected an integer, got 'x'"),
        ({"OVERLAY_AGENT_LEAVE_ON_TERMINATE": "maybe"}, "OVERLAY_AGENT_LEAVE_ON_TERMINATE: expected true or false"),
        ({"OVERLAY_AGENT_JOIN": "10.0.0.2,nope"}, "OVERLAY_AGENT_JOIN #2"),
        ({"OVERLAY_AGENT_TAGS": "novalue"}, "OVERLAY_AGENT_TAGS item 1: expected KEY=VALUE"),
        ({"OVERLAY_AGENT_GOSSIP_PROBE_INTERVAL": "0"}, "OVERLAY_AGENT_GOSSIP_PROBE_INTERVAL: must be a positive"),
    ],
)
def test_bad_env_names_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(cfg.ConfigError, match="^" + needle.replace("(", r"\(")):
        configload.load({"bind": "127.0.0.1"}, environ=env)


def test_bad_flags_name_the_flag() -> None:
    with pytest.raises(cfg.ConfigError, match=r"^--gossip probe_interval: must be a positive"):
        load(["--bind", "127.0.0.1", "--gossip", "probe_interval=-2"])
    with pytest.raises(cfg.ConfigError, match=r"^--gossip 'x': expected NAME=VALUE"):
        load(["--bind", "127.0.0.1", "--gossip", "x"])
    with pytest.raises(cfg.ConfigError, match=r"^--vxlan-port: expected an integer"):
        load(["--bind", "127.0.0.1", "--vxlan-port", "abc"])


def test_missing_explicit_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        agent_main.main(["check-config", "--config", str(tmp_path / "nope.toml")])
    assert info.value.code == 2
    assert "not found" in capsys.readouterr().err


def test_check_config_ok_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, FULL)
    assert agent_main.main(["check-config", "--config", path]) == 0
    assert capsys.readouterr().out == f"overlay-agent: configuration OK ({path})\n"
    assert agent_main.main(["check-config", "--config", path, "--show", "--node", "flagged"]) == 0
    out = capsys.readouterr().out
    lines = {line.split("=")[0].strip(): line for line in out.splitlines() if "=" in line}
    assert lines["node"].endswith("= flagged    # --node")
    assert lines["vxlan_port"].endswith(f"= 4790    # {path}: key 'vxlan_port'")
    assert lines["gossip.probe_interval"].endswith(f"= 5.5    # {path}: key 'gossip.probe_interval'")
    assert lines["metrics_address"].endswith(f"= 127.0.0.1:9464    # {path}: key 'metrics_address'")
    assert KEY32 not in out and KEY16 not in out and "2 key(s)" in out  # secrets redacted


def test_check_config_as_a_process(tmp_path: Path) -> None:
    """The real program: exit statuses and stderr, end to end."""
    bad = write(tmp_path, 'bind = "10.0.0.1"\nvxlan_port = 70000\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERLAY_AGENT_")}
    r = subprocess.run([sys.executable, "-m", "agent", "check-config", "--config", bad],
                       capture_output=True, text=True, env=env, check=False, timeout=60)
    assert r.returncode == 2
    assert r.stderr == f"overlay-agent: error: {bad}: key 'vxlan_port': port must be in 1..65535 (got 70000)\n"
    good = tmp_path / "good.toml"
    good.write_text('bind = "127.0.0.1"\n')
    r = subprocess.run([sys.executable, "-m", "agent", "check-config", "--config", str(good)],
                       capture_output=True, text=True, env=env, check=False, timeout=60)
    assert r.returncode == 0, r.stderr
    # The agent itself refuses a bad config the same way, before starting anything.
    r = subprocess.run([sys.executable, "-m", "agent", "--config", bad],
                       capture_output=True, text=True, env=env, check=False, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "vxlan_port" in r.stderr


def test_version_matches_pyproject() -> None:
    import tomllib

    import agent

    with open(REPO / "pyproject.toml", "rb") as f:
        assert agent.__version__ == tomllib.load(f)["project"]["version"]
