"""``agentctl``: the operator's command line for a running agent (over the control API).

Owns: the entry point (``main``), the parser with every sub-command (the network,
endpoint and dataplane ones are added by ``agent.ctl.network``), the membership and
key commands (``members``, ``status``, ``join``, ``leave``, ``events``, ``keys``) with
their human formats (a ``docker node ls``-like table; ``--format json`` for scripts),
and the bash completion script. Errors are one line on stderr with exit status 1
(agent missing, down, refusing: ``agent.ctl.client.CtlError``); bad usage is exit
status 2. Does not: talk to the socket itself (``agent.ctl.client``), import trio or
touch gossip state.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from agent import __version__
from agent.addresses import DEFAULT_PORT, UsageError, format_address, parse_address
from agent.ctl import network, serf
from agent.ctl.client import DEFAULT_SOCKET, SOCKET_ENV, Client, CtlError
from agent.ctl.output import dump, table
from gossip.tables import protocol as tables_protocol

# -- formats -----------------------------------------------------------------------


def _tags_text(tags: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(tags.items()))


def format_members(members: Sequence[dict[str, Any]]) -> str:
    rows = [
        [
            f"{m['name']} *" if m.get("self") else str(m["name"]),
            format_address((str(m["address"]), int(m["port"]))),
            str(m["status"]),
            str(m["incarnation"]),
            str(m.get("protocol") or "-"),
            _tags_text(m.get("tags") or {}),
        ]
        for m in members
    ]
    return table(["NAME", "ADDRESS", "STATUS", "INCARNATION", "PROTOCOL", "TAGS"], rows)


def _protocol_text(st: dict[str, Any]) -> str:
    proto = st.get("protocol")
    if not isinstance(proto, dict):
        return "1 (agent from before 0.2.0)"
    cluster = proto.get("cluster")
    used = "no common version: upgrade the oldest agents" if cluster == 0 else f"cluster uses {cluster}"
    return f"tables {proto.get('speaks')} ({used})"


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{s}s")
    return "".join(parts)


def format_status(st: dict[str, Any]) -> str:
    counts = st.get("members", {})
    join = st.get("join")
    join_text = "-"
    if isinstance(join, dict):
        failed = join.get("failed") or []
        join_text = f"{join.get('contacted', 0)} seed(s) answered" + (f", failed: {', '.join(failed)}" if failed else "")
    fields = [
        ("Node", str(st.get("node"))),
        ("Address", format_address((str(st.get("address")), int(st.get("port", 0))))),
        ("Version", str(st.get("version"))),
        ("Protocol", _protocol_text(st)),
        ("Uptime", _duration(float(st.get("uptime", 0)))),
        ("Ready", "yes" if st.get("ready", True) else "no (waiting for " + ", ".join(st.get("waiting_for") or []) + ")"),
        ("Profile", str(st.get("profile"))),
        ("Encrypted", ("yes" if st.get("encrypted") else "no")
         + (" (plaintext accepted)" if st.get("encrypted") and st.get("require_encryption") is False else "")),
        ("Members", ", ".join(f"{counts.get(k, 0)} {k}" for k in ("alive", "suspect", "dead", "left"))),
        ("Incarnation", str(st.get("incarnation"))),
        ("Join", join_text),
        ("Leaving", "yes" if st.get("leaving") else "no"),
    ]
    if st.get("state_dir"):
        fields.append(("State dir", str(st["state_dir"])))
    if st.get("metrics"):
        fields.append(("Metrics", f"http://{st['metrics']}/metrics"))
    overlay = st.get("overlay")
    if isinstance(overlay, dict):  # filled in by the overlay layer (agent.overlay.extension)
        fields.append(("VTEP", f"{overlay.get('vtep')} (underlay MTU {overlay.get('underlay_mtu')}, "
                               f"{overlay.get('underlay_mtu_source')})"))
        fields.append(("Networks", f"{overlay.get('networks', 0)} ({overlay.get('networks_joined', 0)} with "
                                   f"local endpoints)"))
        fields.append(("Endpoints", f"{overlay.get('endpoints_local', 0)} local, "
                                    f"{overlay.get('endpoints_remote', 0)} remote"))
        if not overlay.get("dataplane", True):
            fields.append(("Dataplane", "off (dataplane = false)"))
    if "last_reconcile" in st:
        fields.append(("Reconcile", _reconcile_text(st["last_reconcile"])))
    width = max(len(k) for k, _ in fields) + 2
    text = "".join(f"{(k + ':').ljust(width)}{v}\n" for k, v in fields)
    warnings = st.get("warnings") or []
    if warnings:
        text += "Warnings:\n" + "".join(f"  - {w}\n" for w in warnings)
    return text


def _reconcile_text(last: Any) -> str:
    if not isinstance(last, dict):
        return str(last)
    if not last.get("at"):
        return "not yet"
    stamp = time.strftime("%H:%M:%S", time.localtime(float(last["at"])))
    errors = last.get("errors") or []
    outcome = "ok" if last.get("ok") else f"{len(errors)} error(s): {errors[0] if errors else '?'}"
    return (f"{stamp}, {last.get('duration_ms', 0)} ms, {last.get('ops', 0)} ops, "
            f"trigger {last.get('trigger') or '-'}, {outcome}")


def format_keys(result: dict[str, Any]) -> str:
    keys = result.get("keys") or []
    if not keys:
        return f"Encryption is not enabled on {result.get('node')} (no keyring).\n"
    mode = "plaintext refused" if result.get("require_encryption") else "plaintext ACCEPTED (roll-out window)"
    lines = [f"Keyring of {result.get('node')}: {len(keys)} key(s), {mode}"]
    for key in keys:
        lines.append(f"  {'primary' if key == result.get('primary') else '       '}  {key}")
    return "\n".join(lines) + "\n"


_DONE = {
    "install": "Installed the key", "use": "Made the key primary", "remove": "Removed the key",
    "require": "Plaintext gossip is now refused", "allow-plaintext": "Plaintext gossip is now accepted",
}


def format_key_change(result: dict[str, Any]) -> str:
    action = str(result.get("action"))
    node = result.get("node")
    text = f"{_DONE.get(action, action)} on {node}"
    if not result.get("changed") and action in ("install", "use"):
        text += " (no change: it already was)"
    if result.get("persisted"):
        text += f"; keyring saved to {result.get('keyring_file')}"
    elif result.get("changed") and action in ("install", "use", "remove"):
        text += "; WARNING: the keyring was not saved and a restart loses this change"
    text += ".\n"
    others = int(result.get("live_members", 1)) - 1
    if not result.get("cluster_wide") and others > 0:
        text += f"Applied on this node only (--local); {others} other live member(s) were not asked.\n"
    return text


def format_cluster_report(report: dict[str, Any]) -> str:
    applied = report.get("applied") or []
    text = f"Cluster: {len(applied)}/{report.get('members')} members applied it"
    text += f" ({', '.join(applied)}).\n" if applied else ".\n"
    for node, why in sorted((report.get("failed") or {}).items()):
        text += f"  {node}: refused: {why}\n"
    for node in report.get("acked_without_answer") or []:
        text += f"  {node}: acknowledged but gave no answer (not a key-aware member?)\n"
    for node in report.get("no_answer") or []:
        text += f"  {node}: no answer\n"
    by_member = report.get("keys_by_member") or {}
    if by_member:
        distinct = {tuple(sorted(k)) for k in by_member.values()}
        text += ("  every answering member holds the same keys\n" if len(distinct) == 1
                 else "  members hold DIFFERENT keys: see --format json\n")
    return text


def format_event(ev: dict[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(float(ev.get("time", 0))))
    m = ev.get("member") or {}
    addr = format_address((str(m.get("address")), int(m.get("port", 0)))) if m else ""
    return f"{stamp}  {ev.get('type')}  {m.get('name', '')}  {addr}  {m.get('status', '')}\n"


# -- commands ----------------------------------------------------------------------


def cmd_members(client: Client, ns: argparse.Namespace, out: TextIO) -> int:
    members = client.request("members")
    if ns.format == "json":
        dump(members, out)
    else:
        out.write(format_members(members))
    return 0


def cmd_status(client: Client, ns: argparse.Namespace, out: TextIO) -> int:
    st = client.request("status")
    if ns.format == "json":
        dump(st, out)
    else:
        out.write(format_status(st))
    return 0


def cmd_version(client: Client, ns: argparse.Namespace, out: TextIO) -> int:
    """This agentctl's version, then the running agent's (exit 1 if it does not answer)."""
    mine = {"version": __version__, "protocol": tables_protocol.tag_value()}
    try:
        st = client.request("status")
    except CtlError as exc:
        agent: dict[str, Any] = {"error": str(exc)}
    else:
        agent = {"node": st.get("node"), "version": st.get("version"), "protocol": st.get("protocol")}
    if ns.format == "json":
        dump({"agentctl": mine, "agent": agent}, out)
    else:
        out.write(f"agentctl: {mine['version']} (tables protocol {mine['protocol']})\n")
        if "error" in agent:
            out.write(f"agent:    not reachable: {agent['error']}\n")
        else:
            out.write(f"agent:    {agent['version']} on {agent['node']}, {_protocol_text(st)}\n")
    return 1 if "error" in agent else 0


def cmd_join(client: Client, ns: argparse.Namespace, out: TextIO) -> int:
    addresses = []
    for text in ns.addresses:
        try:
            addresses.append(format_address(parse_address(text, DEFAULT_PORT)))
        except UsageError as exc:
            raise CtlError(f"join: {exc}") from None
    result = client.request("join", {"addresses": addresses}) or {}
    contacted = int(result.get("contacted") or 0)
    failed = [str(a) for a in result.get("failed") or []]
    if ns.format == "json":
        dump(result, out)
    else:
        out.write(f"Successfully joined cluster by contacting {contacted} nodes.\n" if contacted else "")
        for addr in failed:
            out.write(f"could not reach {addr}\n")
    if not contacted:
        raise CtlError(f"join: no seed answered ({', '.join(failed) or 'no address'})")
    return 0


def cmd_leave(client: Client, ns: argparse.Namespace, out: TextIO) -> int:
    result = client.request("leave") or {}
    if ns.format == "json":
        dump(result, out)
    elif result.get("announced", True):
        out.write("Graceful leave complete\n")
    else:
        out.write("Left; the leave may not have reached every peer before the agent stopped\n")
    return 0


def _read_key(text: str) -> str:
    """``-`` reads the key from stdin, so that it never shows in a process listing."""
    if text == "-":
        text = sys.stdin.readline()
    return text.strip()


def cmd_keys(client: Client, ns: argparse.Namespace, out: TextIO) -> int:
    args: dict[str, Any] = {"action": ns.action}
    if getattr(ns, "key", None) is not None:
        args["key"] = _read_key(ns.key)
    if getattr(ns, "enable", False):
        args["enable"] = True
    if getattr(ns, "local", False):
        args["local"] = True
    result = client.request("keys", args) or {}
    if ns.format == "json":
        dump(result, out)
        return 0
    out.write(format_keys(result) if ns.action == "list" else format_key_change(result))
    if "cluster" in result:
        out.write(format_cluster_report(result["cluster"]))
    return 0


def cmd_completion(client: Client, ns: argparse.Namespace, out: TextIO) -> int:
    out.write(bash_completion(build_parser()))
    return 0


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script derived from the parser (commands, sub-commands, options)."""
    words: dict[str, list[str]] = {"": _options(parser)}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                names = list(action.choices)
                words[path] = words.get(path, []) + names
                for name, sub in action.choices.items():
                    key = f"{path} {name}".strip()
                    words[key] = _options(sub)
                    walk(sub, key)

    walk(parser, "")
    cases = "\n".join(
        f'        "{k}") words="{" ".join(v)}" ;;' for k, v in sorted(words.items()) if k
    )
    return f"""# bash completion for agentctl; install: agentctl completion bash > /etc/bash_completion.d/agentctl
_agentctl() {{
    local cur path="" w i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        case "$w" in
            --socket|--timeout) ((i++)) ;;
            -*) ;;
            *) path="${{path:+$path }}$w" ;;
        esac
    done
    local words="{" ".join(words[""])}"
    case "${{COMP_WORDS[COMP_CWORD-1]}}" in
        --format) COMPREPLY=($(compgen -W "table text json" -- "$cur")); return ;;
        --socket) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --timeout) return ;;
    esac
    case "$path" in
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _agentctl agentctl
"""


def _options(p: argparse.ArgumentParser) -> list[str]:
    """Long options and the choices of positional arguments (``completion bash``)."""
    out = [o for a in p._actions for o in a.option_strings if o.startswith("--")]
    for a in p._actions:
        if not a.option_strings and a.choices and not isinstance(a, argparse._SubParsersAction):
            out.extend(str(c) for c in a.choices)
    return out


EPILOG = f"""\
examples:
  agentctl members                    table of members; '*' marks this node
  agentctl members --format json      the same as JSON, for scripts
  agentctl status                     node, version, uptime, member counts, warnings
  agentctl events --follow            member changes as they happen
  agentctl keys list                  the gossip keyring
  agentctl keys install -             install a key read from stdin (keeps it out of ps)
  agentctl join 10.0.0.1              join a cluster through a seed (serf or ours)
  agentctl leave                      leave the cluster gracefully and stop the agent
  agentctl network create blue --subnet 10.10.0.0/24    an overlay network (prints its id)
  agentctl endpoint create blue --netns c1             a veth into namespace c1, published
  agentctl endpoint ls                                 local and remote endpoints, VTEPs
  agentctl dataplane                                   kernel vs desired entries per network
  agentctl --socket /tmp/a.sock members
  source <(agentctl completion bash)  shell completion

The socket defaults to ${SOCKET_ENV}, else {DEFAULT_SOCKET}. Access: root, or a
member of the agent's control_group. Errors: exit status 1 with one line on stderr.
"""

KEYS_EPILOG = """\
examples:
  agentctl keys list
  agentctl keys install "$(serf keygen)"       add a key (decrypts; the primary still encrypts)
  agentctl keys use KEY                        make it the primary (encrypting) key
  agentctl keys remove OLDKEY                  drop a key that is no longer primary
encryption roll-out on a running cluster, no restart:
  agentctl keys install --enable KEY           every member holds the key, still sends plaintext
  agentctl keys encrypt                        every member sends encrypted, still accepts plaintext
  agentctl keys require                        every member refuses plaintext
KEY is base64 of 16, 24 or 32 bytes ('-' reads it from stdin). Each change is applied here,
saved in the keyring file, and sent to every member as serf's key query (serf agents apply
it too); the report says which members applied it. --local: this node only.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"agentctl: error: {message} (see --help)\n")


def _format(p: argparse.ArgumentParser, choices: tuple[str, ...] = ("table", "json")) -> None:
    p.add_argument("--format", choices=choices, default=choices[0], help=f"output format (default: {choices[0]})")


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = _Parser(prog="agentctl", description="Control a running overlay-agent.", epilog=EPILOG,
                formatter_class=raw)
    p.add_argument("--socket", default=os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET, metavar="PATH",
                   help=f"agent control socket (default: ${SOCKET_ENV} or {DEFAULT_SOCKET})")
    p.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                   help="how long to wait for the agent (default: 15)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    m = sub.add_parser("members", help="list cluster members", formatter_class=raw,
                       epilog="columns: NAME ('*' = this node) ADDRESS STATUS INCARNATION TAGS\n"
                              "example: agentctl members --format json | jq '.[] | select(.status != \"alive\")'")
    _format(m)
    m.set_defaults(run=cmd_members)
    v = sub.add_parser("version", help="show agentctl's and the agent's versions and tables protocol")
    _format(v, ("text", "json"))
    v.set_defaults(run=cmd_version)
    s = sub.add_parser("status", help="show this agent's status and warnings",
                       epilog="example: agentctl status --format json | jq .warnings")
    _format(s)
    s.set_defaults(run=cmd_status)
    j = sub.add_parser("join", help="join a cluster through one or more seed agents",
                       epilog="example: agentctl join 10.0.0.1 10.0.0.2:7946  (port 7946 by default; "
                              "serf agents are seeds too)")
    j.add_argument("addresses", nargs="+", metavar="ADDR[:PORT]", help="IP, IP:PORT or [IPv6]:PORT")
    _format(j, ("text", "json"))
    j.set_defaults(run=cmd_join)
    lv = sub.add_parser("leave", help="leave the cluster gracefully, then stop the agent",
                        epilog="peers show this node as 'left' (a plain stop shows it failed)")
    _format(lv, ("text", "json"))
    lv.set_defaults(run=cmd_leave)
    serf.add_commands(sub, _Parser, _format, format_event)  # event, events, query, force-leave

    k = sub.add_parser("keys", help="manage the gossip encryption keyring", epilog=KEYS_EPILOG,
                       formatter_class=raw)
    ksub = k.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    ksub.required = True
    kl = ksub.add_parser("list", help="show the keys (primary first)")
    _format(kl)
    for name, text in (("install", "add a key"), ("use", "make an installed key the primary"),
                       ("remove", "remove a key that is not the primary")):
        ka = ksub.add_parser(name, help=text)
        ka.add_argument("key", metavar="KEY", help="base64 key, or '-' to read it from stdin")
        if name == "install":
            ka.add_argument("--enable", action="store_true",
                            help="turn encryption on if it is off (plaintext stays accepted)")
        _format(ka, ("text", "json"))
    for name, text in (("encrypt", "send encrypted gossip (plaintext still accepted)"),
                       ("require", "refuse plaintext gossip (end of an encryption roll-out)"),
                       ("allow-plaintext", "accept plaintext gossip too (an encryption roll-out window)")):
        _format(ksub.add_parser(name, help=text), ("text", "json"))
    for action_parser in ksub.choices.values():
        action_parser.add_argument("--local", action="store_true",
                                   help="apply on this node only (do not ask the other members)")
    k.set_defaults(run=cmd_keys)

    network.add_commands(sub, _Parser, _format)

    c = sub.add_parser("completion", help="print a shell completion script",
                       epilog="example: agentctl completion bash > /etc/bash_completion.d/agentctl")
    c.add_argument("shell", choices=("bash",))
    c.set_defaults(run=cmd_completion)
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    ns = build_parser().parse_args(argv)
    out = out if out is not None else sys.stdout
    if ns.timeout <= 0:
        build_parser().error("--timeout must be positive")
    client = Client(ns.socket, ns.timeout)
    try:
        code: int = ns.run(client, ns, out)
        return code
    except CtlError as exc:
        print(f"agentctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `agentctl events | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
