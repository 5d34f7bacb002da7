"""The ``mesh`` command line. Parsing only: every command's imports happen inside
the command, so ``mesh --help`` stays fast and no command pays for another's."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

__all__ = ["main", "build_parser", "parse_duration", "one_line"]

SERVER_HELP = "NATS server URL (default: $MESH_SERVER or nats://127.0.0.1:4222)"


def one_line(text: str) -> str:
    """``text`` as one printable line: control characters (newlines, escape sequences,
    bidi overrides) and undecodable bytes from the command line are shown escaped, so
    an error quoting a user's value stays one line and cannot redraw the terminal."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage first,
    several lines for most commands): what was wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def parse_duration(text: str) -> float:
    """'30s', '2m', '500ms', '1h', '7d' or plain seconds (an argparse type)."""
    from ..defaults import parse_duration as parse

    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _quorum(text: str) -> int:
    """A review quorum: 0 (no review) or 1 to 16 (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid quorum {text!r}: a whole number of approvals, 1 to 16") from None
    if not 0 <= value <= 16:
        raise argparse.ArgumentTypeError(f"invalid quorum {value}: a review needs 1 to 16 approvals")
    return value


def _whole(name: str, low: int, high: int, what: str = "") -> Any:
    """An argparse type: a whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip()) if len(text) <= 30 else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"invalid {name} {text!r}: a whole number from {low} to {high}{what}")
        return value

    parse.__name__ = name  # (argparse names the type in some messages)
    return parse


def _host(text: str) -> str:
    """An address to listen on: IPv4, or a host name (an argparse type)."""
    import ipaddress
    import re

    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        pass
    if re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*", text):
        return text
    raise argparse.ArgumentTypeError(f"invalid host {text!r}: an IPv4 address (0.0.0.0 for all) or a host name")


def _retention(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--retention",
        type=parse_duration,
        default=None,
        help="how long finished work stays readable (`mesh trace`, the events stream), 2m to 36500d, e.g. 7d "
        "(default 7d)",
    )
    p.add_argument(
        "--retention-bytes",
        type=parse_size,
        default=None,
        help="cap the events history at this size, oldest first, e.g. 10GiB, at most 8 EiB (default 2GiB; 0 for "
        "no cap)",
    )


def parse_size(text: str) -> int:
    """'10GiB', '500MB' or bytes (an argparse type)."""
    from ..defaults import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


TLS_CA_HELP = (
    "PEM file of the CA that signed the broker's TLS certificate: the connection must then be TLS and the "
    "broker's certificate must name the URL's host (default: $MESH_TLS_CA; unset, a TLS broker is checked "
    "against the system's CAs)"
)

NKEY_HELP = (
    "seed file of the key to connect with (default: $MESH_NKEY; none: the broker must be open). "
    "Make one with `mesh keys new`"
)


def _flagging(p: argparse.ArgumentParser) -> None:
    """The thresholds of mesh top's flags (top, ui)."""
    p.add_argument(
        "--stuck-after", type=parse_duration, default=30.0, help="no progress this long = stuck (default 30s)"
    )
    p.add_argument(
        "--loop-after",
        type=_whole("count", 2, 1000),
        default=3,
        help="a capability recurring this often in a chain = looping, 2 to 1000 (default 3)",
    )


def _listen(p: argparse.ArgumentParser, *, port: int) -> None:
    """--host and --port of a command that serves HTTP (loopback unless told otherwise)."""
    p.add_argument("--host", type=_host, default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=_whole("port", 0, 65535), default=port, help=f"HTTP port, 0 for any free one (default {port})"
    )


def _token(p: argparse.ArgumentParser) -> None:
    """--token-file of a gateway that serves HTTP."""
    p.add_argument(
        "--token-file",
        default=os.environ.get("MESH_HTTP_TOKEN_FILE") or None,
        metavar="FILE",
        help="require `Authorization: Bearer <token>` on every request, the token read from FILE (mode 0600; "
        "default $MESH_HTTP_TOKEN_FILE). Required to listen beyond loopback: whoever reaches the port acts as "
        "the gateway's key",
    )


def _server(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=None, help=SERVER_HELP)
    p.add_argument("--tls-ca", default=None, metavar="FILE", help=TLS_CA_HELP)
    p.add_argument("--nkey", default=None, metavar="FILE", help=NKEY_HELP)


KEYS_DIR_HELP = "keys directory (default: $MESH_KEYS, else ./mesh-keys)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mesh",
        description="agent-mesh: a decentralized mesh of AI agents over NATS. No orchestrator: "
        "agents claim, hand off, review and retry work by the rules of one wire protocol.",
        epilog="Start with `mesh demo`. Docs: README.md, docs/PROTOCOL.md.",
    )
    parser.add_argument(
        "--prefix", default=os.environ.get("MESH_PREFIX", "mesh"), help="mesh name on the broker (default: mesh)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run a small organization on an embedded broker (no setup, no API key)")
    p.add_argument("--keep-logs", action="store_true", help="print where the agents' logs are and keep them")
    p.add_argument("name", nargs="?", default="research-desk", help="which installed demo (default: research-desk)")

    p = sub.add_parser("broker", help="run the embedded nats-server with JetStream")
    p.add_argument(
        "--host",
        type=_host,
        default="127.0.0.1",
        help="IPv4 address or host name to listen on (default 127.0.0.1; 0.0.0.0 for other machines)",
    )
    port = _whole("port", 0, 65535)
    p.add_argument("--port", type=port, default=4222, help="client port, 1 to 65535, 0 for any free one (default 4222)")
    p.add_argument(
        "--http-port", type=port, default=8222, help="monitoring port, 1 to 65535, 0 for any free one (default 8222)"
    )
    p.add_argument("--store", default=None, help="JetStream store directory (default: ./mesh-data)")
    p.add_argument("--config", default=None, help="nats-server config file (see deploy/nats/)")
    p.add_argument(
        "--tls-cert",
        default=None,
        metavar="FILE",
        help="PEM certificate (chain) of this broker: clients must then connect with TLS (tls://HOST:PORT, "
        "--tls-ca or $MESH_TLS_CA naming the CA that signed it). Needs --tls-key; see docs/DEPLOY.md",
    )
    p.add_argument("--tls-key", default=None, metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument(
        "--auth",
        default=None,
        metavar="DIR",
        help="run with authorization: only the keys whose .pub files are in DIR may connect, each with its role's "
        "permissions (see `mesh keys`, docs/SECURITY.md). The broker's own setup connects with --nkey, else with "
        "an operator key DIR/operator.nk (made if missing). Without --auth the broker is open to anyone who "
        "reaches it",
    )
    p.add_argument("--nkey", default=None, metavar="FILE", help=f"with --auth: {NKEY_HELP}")
    _retention(p)

    p = sub.add_parser(
        "setup",
        help="create the mesh's streams and buckets on a running broker, or change how long history is kept",
        description="Create the mesh's JetStream resources (tasks bucket, queues' work stream, events stream, "
        "directory) if they are missing, and set the events history's retention. Agents and clients create "
        "missing resources themselves; run this once where a deployment starts nats-server directly, to choose "
        "replicas and retention up front.",
    )
    _retention(p)
    p.add_argument(
        "--replicas",
        type=_whole("replicas", 1, 5, " (JetStream keeps at most 5)"),
        default=None,
        help="replicas of new resources, 1 to 5 (default $MESH_REPLICAS or 1)",
    )
    _server(p)

    p = sub.add_parser("agent", help="run or control one agent")
    asub = p.add_subparsers(dest="agent_command", metavar="ACTION")
    r = asub.add_parser("run", help="run one agent from a brief file until SIGTERM/SIGINT (then drain)")
    r.add_argument("brief", help="brief TOML file (or an org file with --agent NAME)")
    r.add_argument(
        "--id",
        default=None,
        help="agent id, unique in the mesh (default: the brief's name plus a random suffix, e.g. writer-3f2a; "
        "a second live agent under an id in use is refused)",
    )
    r.add_argument("--agent", default=None, help="with an org file: which agent of it to run")
    _server(r)
    d = asub.add_parser("drain", help="ask a running agent to drain: stop claiming, finish or hand back, leave")
    d.add_argument("id", help="agent id (see `mesh agents`)")
    _server(d)
    s = asub.add_parser("status", help="ask a running agent what it holds")
    s.add_argument("id")
    _server(s)

    p = sub.add_parser(
        "up",
        help="run an organization: broker (unless --server) plus one process per agent",
        description="Run an organization. Without --server, the broker runs with authorization on: each agent "
        "connects with its own key (made in the keys directory if missing, reused if present), and the keys "
        "`operator` and `client` are made there for you (drain agents, submit work). Each agent is reported as it "
        "joins the directory (agent NAME up (k/n)).",
    )
    p.add_argument("org", help="org TOML file")
    p.add_argument(
        "--keys",
        default=None,
        metavar="DIR",
        help=f"{KEYS_DIR_HELP}; with --server, only given this way (or $MESH_KEYS) do agents use keys from it",
    )
    p.add_argument(
        "--bind",
        action="store_true",
        help="bind each agent's key to its brief's capabilities and those below them that the org names (served, "
        "delegated to, reviewing): the broker then gives it no other queue's work, and a task of a capability "
        "below its own that no brief names waits for a specialist instead of going to it. Without --bind, keys "
        "are used as they are (a new agent key takes any queue's work)",
    )
    _server(p)

    p = sub.add_parser("submit", help="submit a task")
    p.add_argument("capability", help="capability to ask for, e.g. summarize or summarize.medical")
    p.add_argument("text", help="the instruction")
    p.add_argument("--data", default=None, help="JSON input for the task (or @FILE)")
    p.add_argument("--criteria", default="", help="acceptance criteria reviewers check against")
    p.add_argument(
        "--review", type=_quorum, default=0, metavar="N", help="require N approvals from `review` agents (1 to 16)"
    )
    p.add_argument("--reviewer", default="review", help="reviewer capability (default: review)")
    p.add_argument(
        "--reject-quorum",
        type=_whole("reject quorum", 1, 16),
        default=None,
        metavar="R",
        help="with --review: in the last review round only R distinct vetoes reject the result, 1 to 16 "
        "(default 1: the first veto does)",
    )
    p.add_argument("--deadline", type=parse_duration, default=None, help="deadline, e.g. 30s or 5m")
    p.add_argument(
        "--hops", type=_whole("hops", 0, 100), default=8, help="hop limit for handoffs, 0 to 100 (default 8)"
    )
    p.add_argument(
        "--claim-timeout", type=parse_duration, default=10.0, help="fail no_agent if unclaimed this long (default 10s)"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for the task to end and print the result; meanwhile its status (state, owner, last progress "
        "note, elapsed) is on stderr: one line rewritten in place on a terminal, a line per change otherwise",
    )
    p.add_argument("--json", action="store_true", help="print JSON (with --wait: the final record)")
    _server(p)

    p = sub.add_parser("agents", help="list live agents from the directory")
    p.add_argument("--json", action="store_true")
    _server(p)

    p = sub.add_parser(
        "watch",
        help="print events live",
        description="Print the mesh's events as they come. With identities, an event that no verified "
        "write of its task shows (its state, epoch and time) is marked UNBACKED: events are unsigned, "
        "and anyone who may write tasks may publish one. Every write is verified as the broker "
        "republishes it; an event whose write was not seen (--history) is looked up in the archive.",
    )
    p.add_argument("--root", default=None, help="only this task tree")
    p.add_argument("--history", action="store_true", help="print stored events first")
    _server(p)

    p = sub.add_parser("trace", help="show a task tree: owners, timings, reasons, and its events")
    p.add_argument("id", help="task id")
    p.add_argument("--json", action="store_true")
    _server(p)

    p = sub.add_parser("cancel", help="cancel a task and its descendants")
    p.add_argument("id")
    _server(p)

    p = sub.add_parser("brief", help="write or check brief and org files")
    bsub = p.add_subparsers(dest="brief_command", metavar="ACTION")
    c = bsub.add_parser("check", help="validate a brief or org file")
    c.add_argument("file")
    n = bsub.add_parser("new", help="write a commented brief template")
    n.add_argument("file", nargs="?", default="-", help="where to write (default: stdout)")

    p = sub.add_parser("inbox", help="work and reviews addressed to people (human.* capabilities)")
    p.add_argument("--capability", default="human", help="capability prefix of the inbox (default: human)")
    p.add_argument(
        "--as", dest="as_", default=None, metavar="NAME", help="your id in the mesh (default: human-<login>)"
    )
    p.add_argument("--json", action="store_true")
    _server(p)
    isub = p.add_subparsers(dest="inbox_command", metavar="ACTION")
    isub.add_parser("list", help="list what waits for a person (the default)")
    a = isub.add_parser("answer", help="take an open task and finish it with your answer")
    a.add_argument("id")
    a.add_argument("text")
    a = isub.add_parser("approve", help="approve a result under review")
    a.add_argument("id")
    a = isub.add_parser("veto", help="send a result back, with reasons")
    a.add_argument("id")
    a.add_argument("--reason", action="append", required=True, help="why (repeatable)")

    p = sub.add_parser(
        "top",
        help="live view of agents and tasks; flags stuck, looping and overloaded work",
        description="Show the live agents and tasks, flagging stuck, looping and overloaded work. It reads the "
        "tasks bucket once (every record verified, with identities), then follows the writes the broker "
        "republishes, so a refresh costs what changed since the last one; --once reads the whole bucket "
        "(it holds every task finished in the last MESH_FINISHED_TTL, so that read grows with a busy mesh).",
    )
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true", help="with --once: JSON for scripts")
    p.add_argument("--interval", type=parse_duration, default=1.0, help="refresh interval (default 1s)")
    _flagging(p)
    _server(p)

    p = sub.add_parser(
        "ui",
        help="a live web view: agents, tasks with top's flags, task trees and timelines, the human inbox",
        description="Serve a live view of the mesh to a browser until SIGTERM/SIGINT: the directory, live and "
        "recent tasks (flagged stuck, looping or overloaded as by `mesh top`), a task's tree and timeline (as "
        "`mesh trace`), and the human inbox with answer, approve and veto. Nothing is fetched from the internet. "
        "With auth on, actions need an operator's key (--nkey); with another key the view is read-only. Needs "
        "the extra: pip install 'agent-mesh[ui]'. See docs/UI.md.",
    )
    _listen(p, port=8080)
    _token(p)
    p.add_argument(
        "--as",
        dest="as_",
        default=None,
        metavar="NAME",
        help="who inbox actions are made as (default: the --nkey's name, else human-<login>)",
    )
    p.add_argument("--capability", default="human", help="capability prefix of the inbox (default: human)")
    _flagging(p)
    _server(p)

    p = sub.add_parser("a2a", help="speak A2A: put the mesh behind an A2A endpoint (docs/INTEROP.md)")
    xsub = p.add_subparsers(dest="a2a_command", metavar="ACTION")
    x = xsub.add_parser(
        "serve",
        help="serve the mesh to A2A clients: agent card, JSON-RPC (A2A 1.0 and 0.3), streaming",
        description="Serve the mesh as one A2A agent until SIGTERM/SIGINT: its card (at "
        "/.well-known/agent-card.json) lists the capabilities live agents serve as skills; a message "
        "(to /) becomes a mesh task of the skill named in its metadata ('skill', else the first). Gateways "
        "hold no state: run several with the same --id. Needs the extra: pip install 'agent-mesh[a2a]'.",
    )
    _listen(x, port=8000)
    x.add_argument(
        "--capability",
        action="append",
        default=[],
        metavar="CAP",
        help="serve only this capability (and those under it) as a skill; repeatable (default: all served)",
    )
    x.add_argument(
        "--url",
        default=None,
        help="the URL clients reach this gateway at, for the card (default http://HOST:PORT/; set it behind a "
        "proxy or with --host 0.0.0.0)",
    )
    x.add_argument(
        "--claim-timeout",
        type=parse_duration,
        default=10.0,
        help="a task no agent takes this long fails (A2A: failed, no_agent) (default 10s)",
    )
    x.add_argument(
        "--id",
        default=None,
        help="the gateway's identity in the mesh, shared by every gateway of one A2A endpoint (default: the "
        "--nkey's name, else a2a-gateway)",
    )
    _token(x)
    _server(x)

    sub.add_parser("kinds", help="list the agent kinds: built-in and published by installed packages")

    p = sub.add_parser("bench", help="run a benchmark of this checkout through a real mesh (docs/BENCHMARKS.md)")
    bsub = p.add_subparsers(dest="bench_command")
    o = bsub.add_parser(
        "org",
        help="noisy workers and reviewers under review policies: accuracy, losses and cost beside the arithmetic "
        "(docs/ORGANIZATIONS.md)",
    )
    o.add_argument(
        "--full",
        action="store_true",
        help="the full sweep behind docs/BENCHMARKS.md (about 10 minutes on 2 cores; writes bench/results/org.json); "
        "default: a quick sweep of a few tasks per cell (seconds; figures not meaningful)",
    )

    p = sub.add_parser(
        "keys",
        help="make and list identities (ed25519 keys in NATS's nkey format)",
        description="A key is NAME.nk (the secret seed, mode 0600) and NAME.pub (name, role, public key, the "
        "capabilities it is bound to) in a keys directory. NAME is its holder's id in the mesh. Roles: agent (works; "
        "writes only its own card; takes work only from the queues it is bound to), client (submits, cancels, reads; "
        "writes no cards, drains nobody), operator (everything).",
    )
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    k = ksub.add_parser("new", help="make a key: writes DIR/NAME.nk and DIR/NAME.pub, prints the public key")
    k.add_argument("name", help="the key's name: the agent or client id it acts as (letters, digits, '_', '-')")
    k.add_argument(
        "--role",
        required=True,
        choices=("agent", "client", "operator"),
        help="what the key may do: agent (works; writes only its own card and control subject), client (submits, "
        "reads, cancels; no cards, no control), operator (everything: drain agents, change retention)",
    )
    k.add_argument(
        "--serves",
        action="append",
        default=None,
        metavar="CAP",
        help="bind the key to a capability (repeat for several; '*' for any); the broker enforces it: an agent "
        "takes work only from these capabilities' queues (list the ones below a served capability too, e.g. "
        "summarize and summarize.medical), a client (a person answering from the inbox) may clear the items of "
        "what it answered. Default: an agent's key any queue, a client's (a requester's) none",
    )
    k.add_argument("--dir", default=None, help=KEYS_DIR_HELP)
    k = ksub.add_parser(
        "bind",
        help="bind an existing key to capabilities (rewrites NAME.pub; then rewrite the auth config and reload)",
        description="Bind key NAME to the capabilities it serves: the broker lets an agent take work only from "
        "those queues, and a client clear only if bound to some. Takes effect when the broker's auth config is "
        "rewritten (`mesh auth config DIR --out FILE`) and the server reloaded; `mesh broker --auth` and `mesh up` "
        "rewrite it at start.",
    )
    k.add_argument("name", help="the key's name")
    k.add_argument(
        "--serves",
        action="append",
        required=True,
        metavar="CAP",
        help="a capability (repeat; '*' for any; '' for none)",
    )
    k.add_argument("--dir", default=None, help=KEYS_DIR_HELP)
    k = ksub.add_parser("list", help="list the public keys in a keys directory")
    k.add_argument("dir", nargs="?", default=None, help=KEYS_DIR_HELP)
    k.add_argument("--json", action="store_true")

    p = sub.add_parser("auth", help="broker authorization from a keys directory")
    usub = p.add_subparsers(dest="auth_command", metavar="ACTION")
    c = usub.add_parser(
        "config",
        help="write a nats-server authorization block for the public keys in DIR",
        description="Write a nats-server config fragment (`authorization { users = [...] }`: one nkey user per "
        "DIR/*.pub, with its role's publish/subscribe permissions) for a production server to `include`. "
        "Reload the server (nats-server --signal reload) after adding keys.",
    )
    c.add_argument("dir", help="keys directory (its *.pub files)")
    c.add_argument("--out", default=None, metavar="FILE", help="write here (default: stdout)")

    p = sub.add_parser("otel", help="OpenTelemetry: send a span per task to your tracing system")
    osub = p.add_subparsers(dest="otel_command", metavar="ACTION")
    o = osub.add_parser(
        "export",
        help="follow the events stream and send one span per task (OTLP over HTTP or gRPC)",
        description="Follow the mesh's events stream until SIGTERM/SIGINT and send one span per task when it "
        "ends: its trace and span ids are the task's traceparent's (children under their parent task, model "
        "calls of agents with OTEL_* settings under their task), its attributes the final record's (capability, "
        "owner, epoch, attempts, result size, tokens and cost, reason) and its span events the transitions "
        "(claim, lapse, hand-back, re-open, vote, veto, clarification...). Configured by the standard OTEL_* "
        "variables: OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318), OTEL_EXPORTER_OTLP_PROTOCOL "
        "(http/protobuf or grpc), OTEL_SERVICE_NAME, OTEL_TRACES_EXPORTER=console to print them. Run one per "
        "mesh. Needs the otel extra: pip install 'agent-mesh[otel]'.",
    )
    o.add_argument(
        "--history", action="store_true", help="first send the spans of the tasks the events stream still holds"
    )
    _server(o)

    p = sub.add_parser("mcp", help="serve the mesh to MCP hosts (desktop assistants, IDEs) as tools")
    msub = p.add_subparsers(dest="mcp_command", metavar="ACTION")
    m = msub.add_parser(
        "serve",
        help="an MCP server with the tools submit, wait, agents, trace, cancel, inbox, answer",
        description="Serve the mesh as MCP tools: over stdio (the default; an MCP host starts this command "
        "itself) or streamable HTTP (--http, at http://HOST:PORT/mcp). A mesh client like `mesh submit`: "
        "several may serve one mesh. Needs the mcp extra (pip install 'agent-mesh[mcp]'); see docs/INTEROP.md",
    )
    m.add_argument("--http", action="store_true", help="serve streamable HTTP instead of stdio")
    m.add_argument(
        "--host", type=_host, default="127.0.0.1", help="with --http: address to listen on (default 127.0.0.1)"
    )
    m.add_argument(
        "--port", type=_whole("port", 1, 65535), default=8765, help="with --http: port, 1 to 65535 (default 8765)"
    )
    _token(m)
    _server(m)
    return parser


#: arguments that name files: any bytes the file system takes are fine there
_PATHS = frozenset(
    {
        "brief",
        "org",
        "file",
        "store",
        "config",
        "tls_ca",
        "tls_cert",
        "tls_key",
        "nkey",
        "auth",
        "dir",
        "out",
        "keys",
        "token_file",
    }
)


def _refuse_undecodable(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse text that is not UTF-8 (Python keeps undecodable bytes of the command line
    as lone surrogates): it could never be written to the broker, and would fail there
    with an encoding error instead of saying which argument it was."""
    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if not isinstance(v, str) or name in _PATHS or (name == "data" and v.startswith("@")):
                continue
            try:
                v.encode()
            except UnicodeEncodeError:
                flag = f"--{name.rstrip('_').replace('_', '-')}"
                parser.error(f"argument {flag}: {one_line(v)!r} is not UTF-8 text")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _refuse_undecodable(parser, args)
    if getattr(args, "tls_ca", None):
        # Through the environment, as MESH_TLS_CA: every connection this command makes
        # reads it from there (Settings.from_env), and so do the agents `mesh up` starts.
        os.environ["MESH_TLS_CA"] = args.tls_ca
    from ..logs import configure_logging
    from . import commands  # light: each command imports what it needs

    # Logs go to stderr; stdout is for results (so --json output stays parseable).
    configure_logging(
        None if args.command in ("agent", "up", "broker") else os.environ.get("MESH_LOG_LEVEL", "warning")
    )

    try:
        return commands.dispatch(args, parser)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`mesh watch | head`): not an error worth a traceback.
        # Point stdout at devnull so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except commands.UserError as exc:
        print(f"mesh {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
