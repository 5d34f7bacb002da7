"""The generated sections of ``docs/PROTOCOL.md``, between ``<!-- BEGIN GENERATED: x -->``
and ``<!-- END GENERATED: x -->``: the state diagram and transition table (from
:data:`protocol.machine.TRANSITIONS`), refusals, message examples, names, constants,
limits and resources."""

from __future__ import annotations

import inspect
import itertools
import json
import re
import typing
from typing import Any

import msgspec

from protocol.codec import MAX_MESSAGE_BYTES, decode_work_item, encode
from protocol.errors import RemoteProtocolError
from protocol.events import EVENT_KINDS, Event
from protocol.limits import LIMITS
from protocol.machine import TRANSITIONS
from protocol.names import (
    _AGENT_ID_RE,
    _CAPABILITY_RE,
    _KIND_RE,
    _PREFIX_RE,
    _TASK_ID_RE,
    MAX_PRIORITY,
    PRIORITY_GROUP,
    VERSION_HEADER,
    Names,
    clarification_capability,
)
from protocol.rules import DEFAULT_CLAIM_TIMEOUT_S, DEFAULT_HOPS, DEFAULT_LEASE_S, event_id, work_item_id, work_items
from protocol.signing import MAX_CLOCK_SKEW_S
from protocol.types import (
    PROTOCOL_VERSION,
    REASONS,
    TERMINAL_STATES,
    AgentCard,
    Budget,
    ControlReply,
    ControlRequest,
    ErrorReport,
    NotUnderstood,
    ReviewPolicy,
    ReviewSlot,
    TaskEvent,
    TaskRecord,
    Usage,
    Vote,
)

from .cases import T0, Cases
from .names import consumer_created_advisory, create_subject, pull_subject
from .resources import NS, resource_vectors
from .schemas import json_schema
from .transitions import STATES, sample_event, transition_vectors

__all__ = ["SECTION_RE", "doc_sections", "fields", "first_line", "render_doc"]


def _diagram() -> str:
    edges: dict[tuple[str, str], list[str]] = {}
    for (state, kind), targets in TRANSITIONS.items():
        for target in targets:
            edges.setdefault((state, target), []).append(kind)
    lines = ["```mermaid", "stateDiagram-v2", "    [*] --> open: create"]
    for (state, target), kinds in edges.items():
        lines.append(f"    {state} --> {target}: {', '.join(kinds)}")
    for state in STATES:
        if state in TERMINAL_STATES:
            lines.append(f"    {state} --> [*]")
    lines += [
        "    note left of failed",
        "        any event but cancel at or after",
        "        the deadline ends a live task here",
        "        with reason deadline",
        "    end note",
        "```",
    ]
    return "\n".join(lines)


def first_line(obj: Any) -> str:
    """The first paragraph of ``obj``'s docstring, on one line."""
    doc = inspect.cleandoc(obj.__doc__ or "")
    return " ".join(re.split(r"\n\s*\n", doc)[0].split()).replace("``", "`")


def _transition_table() -> str:
    by_kind = {cls.__struct_config__.tag: cls for cls in typing.get_args(Event)}
    rows = ["| State | Event | Leads to | What the event is |", "|---|---|---|---|"]
    for (state, kind), targets in TRANSITIONS.items():
        rows.append(f"| `{state}` | `{kind}` | {', '.join(f'`{t}`' for t in targets)} | {first_line(by_kind[kind])} |")
    rows.append(
        "| `open`, `working`, `review` | any but `cancel`, at or after `deadline` | `failed` (`deadline`) | The deadline rule, checked before the row's own effect. |"
    )
    return "\n".join(rows)


def _refusal_table(cases: Cases) -> str:
    rows = ["| Case | State | Event | Refusal |", "|---|---|---|---|"]
    for case in transition_vectors(cases):
        expect = case["expect"]
        if "error" in expect and not case["name"].startswith("illegal: "):
            name = case["name"].split(": ", 1)[1]
            rows.append(f"| {name} | `{expect['state']}` | `{expect['event']}` | `{expect['error']}` |")
    illegal = sum(1 for p in itertools.product(STATES, EVENT_KINDS) if p not in TRANSITIONS)
    rows.append(f"| any of the {illegal} (state, event) pairs not in the table | | | `TransitionError` |")
    return "\n".join(rows)


def _type_of(prop: dict[str, Any]) -> str:
    """A short human reading of a JSON Schema property."""
    if "$ref" in prop:
        return f"`{prop['$ref'].rsplit('/', 1)[-1]}`"
    if "anyOf" in prop:
        return " or ".join(_type_of(branch) for branch in prop["anyOf"])
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    kind = prop.get("type")
    if kind is None:
        return "any JSON"
    if kind == "array":
        most = f", at most {prop['maxItems']}" if "maxItems" in prop else ""
        return f"array of {_type_of(prop['items'])}{most}"
    text = str(kind)
    bounds = [
        f"{op} {prop[key]}"
        for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="))
        if key in prop
    ]
    if "maxLength" in prop:
        bounds.append(f"at most {prop['maxLength']} characters")
    if bounds:
        text += f" ({', '.join(bounds)})"
    if "pattern" in prop:
        text += " (a name, see Names)"
    return text


def fields(tp: Any) -> str:
    """The field table of a wire struct, from its JSON Schema."""
    body = json_schema(tp)
    name = tp.__name__
    definition = body["$defs"][name]
    rows = ["| Field | Type | Default |", "|---|---|---|"]
    for field, prop in definition["properties"].items():
        default = "required" if field in definition.get("required", ()) else f"`{json.dumps(prop.get('default'))}`"
        rows.append(f"| `{field}` | {_type_of(prop)} | {default} |")
    return "\n".join(rows)


def _json_block(obj: Any) -> str:
    return "```json\n" + msgspec.json.format(encode(obj), indent=2).decode() + "\n```"


def _messages(cases: Cases) -> str:
    w = cases.world
    names = Names()
    record = w["one_vote_held"]
    item = w["t1_item"]
    review_items = work_items(w["rv_working"], w["review"], 2)
    out: list[str] = []

    def section(title: str, where: str, obj: Any, after: str = "") -> None:
        out.append(
            f"#### {title}\n\n{where}\n\n{fields(type(obj))}\n\n{_json_block(obj)}\n"
            + (f"\n{after}\n" if after else "")
        )

    section(
        "Task record",
        f"Value of `{names.task_key('T2')}` in `{names.tasks_bucket}`, republished on "
        f"`{names.record_subject('T2')}` (a task in review: one approval, one reviewer at work in "
        "the other slot, under review item 52).",
        record,
    )
    section(
        "Work item",
        f"Published on `{names.work_subject(item.capability)}` (stream `{names.work_stream}`, the queue of "
        f"`{item.capability}`) with headers `Nats-Msg-Id: {work_item_id(item)}` and "
        f"`{VERSION_HEADER}: {PROTOCOL_VERSION}`: task T1's work item as its requester makes it, carrying the "
        "open record (revision 0: the record is not in the tasks bucket yet).",
        item,
        "A review item has the same shape, with `kind` `review`, the reviewer capability as `capability`, "
        "the round and the slot: T2's first round has "
        + " and ".join(
            f"`{work_item_id(r)}` (round {r.round}, slot {r.slot}, on `{names.work_subject(r.capability)}`)"
            for r in review_items
        )
        + ".",
    )
    card = AgentCard(
        id="agent-a",
        role="medical summarizer",
        description="Summarizes clinical letters for family doctors.",
        kind="llm",
        serves=("summarize.medical",),
        delegates=("translate",),
        expertise=("cardiology",),
        capacity=4,
        load=1,
        tasks=("T1",),
        version="0.1.0",
        host="node-1",
        pid=4242,
        started=T0,
        completed=17,
        failed=1,
    )
    section("Agent card", f"Value of `{names.agent_key('agent-a')}` in `{names.agents_bucket}`.", card)
    event = TaskEvent(
        kind="approve",
        task="T2",
        root="T2",
        capability="summarize.medical",
        actor="critic-1",
        epoch=1,
        state="review",
        at=T0 + 70,
    )
    section(
        "Task event",
        f"Published on `{names.event_subject('T2', 'T2', 'approve')}` (stream `{names.events_stream}`), headers "
        f"`{VERSION_HEADER}: {PROTOCOL_VERSION}` and `Nats-Msg-Id: {event_id('approve', record, 5)}` (task, record "
        "revision, kind, and the tag of the record the event announces: `record_tag`). "
        "`created` events and the events of transitions that end a task carry the record in `record`.",
        event,
    )
    out.append(
        "#### Transitions\n\nOne object per event kind, tagged by `kind`: what an actor asks to do to a record "
        "(logged, replayed from the vectors, or sent by an agent in any language).\n"
    )
    for kind in EVENT_KINDS:
        record_for = w["review"] if kind in ("approve", "veto", "reviewing") else w["working"]
        sample = sample_event(kind, record_for)
        out.append(f"`{kind}`: {first_line(type(sample))}\n\n{_json_block(sample)}\n")
    try:
        decode_work_item(b'{"task":"T9","capability":"summarize","revision":"7"}')
    except RemoteProtocolError as exc:
        bad_item = str(exc)
    section(
        "Error report",
        f"Published on `{names.error_subject('agent-a')}`.",
        ErrorReport(
            agent="agent-a", subject=names.work_subject("summarize"), error=f"bad work item: {bad_item}", at=T0
        ),
    )
    section(
        "Not understood",
        f"Reply to a request on `{names.control_subject('agent-a')}` the agent cannot decode.",
        NotUnderstood(
            subject=names.control_subject("agent-a"),
            error="control request: Invalid enum value 'reboot' - at `$.action`",
            at=T0,
        ),
    )
    section("Control request", f"Request on `{names.control_subject('agent-a')}`.", ControlRequest(action="drain"))
    section(
        "Control reply",
        "The answer to a control request.",
        ControlReply(agent="agent-a", action="drain", draining=True, tasks=("T1",)),
    )
    for tp in (ReviewPolicy, Vote, ReviewSlot, Budget, Usage):
        out.append(f"#### {tp.__name__} (nested)\n\n{first_line(tp) or 'Part of a task record.'}\n\n{fields(tp)}\n")
    return "\n".join(out).rstrip()


def _names_table() -> str:
    pat, ex = Names("zzprefix"), Names()
    subs = {
        "zzprefix": "<prefix>",
        "ZZROOT": "<root>",
        "ZZTASK": "<task>",
        "ZZAGENT": "<agent>",
        "zzcap": "<capability>",
        "zzkind": "<kind>",
        "zzagent": "<agent, lowercased>",
    }

    def pattern(text: str) -> str:
        for key, value in subs.items():
            text = text.replace(key, value)
        return text

    rows: list[tuple[str, str, str]] = [
        ("Tasks bucket (JetStream KV)", pat.tasks_bucket, ex.tasks_bucket),
        ("Task record key (tasks bucket)", pat.task_key("ZZTASK"), ex.task_key("T1")),
        (
            "Republished record writes (RePublish destination of the tasks bucket)",
            pat.records_subjects,
            ex.records_subjects,
        ),
        ("Republished writes of one task's record", pat.record_subject("ZZTASK"), ex.record_subject("T1")),
        ("Work stream (JetStream, work-queue retention)", pat.work_stream, ex.work_stream),
        ("Work stream subjects", pat.work_subjects, ex.work_subjects),
        (
            "Queue subject of a capability (its work items)",
            pat.work_subject("zzcap"),
            ex.work_subject("summarize.medical"),
        ),
        (
            "Queue of a capability (durable pull consumer of the work stream)",
            "<capability with each . as ~>",
            ex.queue_consumer("summarize.medical"),
        ),
        ("Priority group of every queue", PRIORITY_GROUP, PRIORITY_GROUP),
        (
            "Pull request subject of a queue",
            pull_subject(pat, "zzcap").replace("zzcap", "<queue>"),
            pull_subject(ex, "summarize.medical"),
        ),
        (
            "Queue creation subject",
            create_subject(pat, "zzcap").replace(".zzcap.", ".<queue>.", 1),
            create_subject(ex, "summarize.medical"),
        ),
        ("Advisories of new queues", consumer_created_advisory(pat), consumer_created_advisory(ex)),
        ("Events stream", pat.events_stream, ex.events_stream),
        ("Events stream subjects", ", ".join(pat.events_subjects), ", ".join(ex.events_subjects)),
        (
            "Transition event subject",
            pat.event_subject("ZZROOT", "ZZTASK", "zzkind"),
            ex.event_subject("T1", "T1-c1", "claim"),
        ),
        ("Events of one task tree", pat.events_filter("ZZROOT"), ex.events_filter("T1")),
        ("Events of one task", pat.task_events_filter("ZZTASK", "ZZROOT"), ex.task_events_filter("T1-c1", "T1")),
        ("Directory bucket (JetStream KV)", pat.agents_bucket, ex.agents_bucket),
        ("Agent card key (directory bucket)", pat.agent_key("ZZAGENT"), ex.agent_key("agent-a")),
        ("Error reports of an agent", pat.error_subject("ZZAGENT"), ex.error_subject("agent-a")),
        ("Control endpoint of an agent", pat.control_subject("ZZAGENT"), ex.control_subject("agent-a")),
        ("Services API name (`$SRV.*`)", pat.service_name, ex.service_name),
        (
            "Clarification capability of an agent",
            clarification_capability("ZZAGENT"),
            clarification_capability("Client-1"),
        ),
        ("Version header", f"{VERSION_HEADER}: <major>", f"{VERSION_HEADER}: {PROTOCOL_VERSION}"),
    ]
    lines = ["| Name | Pattern | Example |", "|---|---|---|"]
    lines += [f"| {label} | `{pattern(p)}` | `{e}` |" for label, p, e in rows]
    lines += [
        "",
        "| Token | Grammar (full match) |",
        "|---|---|",
        f"| `<prefix>` | `{_PREFIX_RE.pattern}` |",
        f"| `<capability>` | `{_CAPABILITY_RE.pattern}` |",
        f"| `<agent>` | `{_AGENT_ID_RE.pattern}` |",
        f"| `<task>`, `<root>` | `{_TASK_ID_RE.pattern}` |",
        f"| `<kind>` | `{_KIND_RE.pattern}` |",
    ]
    return "\n".join(lines)


def _constants() -> str:
    defaults = TaskRecord(id="T", capability="x", instruction="", requester="c", root="T", created=0.0, updated=0.0)
    policy = ReviewPolicy()
    rows = [
        ("Protocol major version (`v` field, names, header)", PROTOCOL_VERSION),
        ("Largest message accepted, bytes", MAX_MESSAGE_BYTES),
        ("Default hop limit of a new task", DEFAULT_HOPS),
        ("Default lease of a queue (its consumer's `ack_wait`), seconds", DEFAULT_LEASE_S),
        ("Default claim timeout, seconds (`claim_timeout_s`)", DEFAULT_CLAIM_TIMEOUT_S),
        ("Default `max_lapses` (owners lost before the task fails)", defaults.max_lapses),
        (
            "Clock skew allowed where time decides a write's legality (a takeover, a deadline's end), seconds "
            "(`MAX_CLOCK_SKEW_S`)",
            MAX_CLOCK_SKEW_S,
        ),
        (
            "Default review policy",
            f"`quorum` {policy.quorum}, `capability` `{policy.capability}`, `max_reworks` {policy.max_reworks}, "
            f"`escalation_timeout_s` {policy.escalation_timeout_s}",
        ),
        ("Priority group of every queue and pull", f"`{PRIORITY_GROUP}`"),
        ("Pull priorities (0 is served first)", f"0 to {MAX_PRIORITY}"),
        ("Terminal reasons", ", ".join(f"`{r}`" for r in REASONS)),
    ]
    assert defaults.claim_timeout_s == DEFAULT_CLAIM_TIMEOUT_S
    return "\n".join(["| Constant | Value |", "|---|---|", *(f"| {label} | {value} |" for label, value in rows)])


def _limits_table() -> str:
    lines = ["| Field | Limit | Unit | Refused on write by | Refused on read by | Why |", "|---|---|---|---|---|---|"]
    for lim in LIMITS:
        value = int(lim.limit) if lim.limit == int(lim.limit) else lim.limit
        lines.append(f"| `{lim.field}` | {value} | {lim.unit} | {lim.write} | {lim.read} | {lim.why} |")
    return "\n".join(lines)


def _setting(key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and key in _DURATIONS and value % NS == 0:
        return f"`{key}` {value // NS} s"
    return f"`{key}` `{json.dumps(value)}`"


#: Settings that the JetStream API gives in nanoseconds (shown in seconds in the docs).
_DURATIONS = frozenset({"max_age", "duplicate_window", "subject_delete_marker_ttl", "ack_wait", "inactive_threshold"})


def _resources_table() -> str:
    vectors = resource_vectors()
    lines = ["| Resource | MUST have | Reference default (an operator's choice) |", "|---|---|---|"]
    for stream in vectors["streams"]:
        must = "<br>".join(_setting(k, v) for k, v in stream["must"].items())
        default = "<br>".join(_setting(k, v) for k, v in stream["default"].items())
        lines.append(f"| stream `{stream['name']}`: {stream['what']} | {must} | {default} |")
    queue = vectors["queue"]
    must = "<br>".join(_setting(k, v) for k, v in queue["must"].items())
    default = "<br>".join(_setting(k, v) for k, v in queue["default"].items())
    lines.append(f"| consumer of `{queue['stream']}`: the queue of `{queue['capability']}` | {must} | {default} |")
    lines += ["", "| Write | Subject | Headers (exactly) |", "|---|---|---|"]
    for case in vectors["headers"]:
        headers = "<br>".join(f"`{k}: {v}`" for k, v in case["headers"].items())
        lines.append(f"| {case['what']} | `{case['subject']}` | {headers} |")
    return "\n".join(lines)


def doc_sections(cases: Cases | None = None) -> dict[str, str]:
    """Generated section name -> its Markdown body."""
    cases = cases or Cases()
    return {
        "diagram": _diagram(),
        "transitions": _transition_table(),
        "refusals": _refusal_table(cases),
        "messages": _messages(cases),
        "names": _names_table(),
        "constants": _constants(),
        "limits": _limits_table(),
        "resources": _resources_table(),
    }


SECTION_RE = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)", re.DOTALL
)
_NOTICE = "<!-- generated by `python -m tools.spec` from the code; do not edit by hand -->\n"


def render_doc(text: str, cases: Cases | None = None) -> tuple[str, list[str]]:
    """``text`` with every generated section rewritten; and the names of sections the
    generator knows that ``text`` has no markers for (or has twice)."""
    sections = doc_sections(cases)
    seen: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name = match.group("name")
        seen.append(name)
        if name not in sections:
            return match.group(0)
        return f"{match.group(1)}{_NOTICE}\n{sections[name]}\n\n{match.group(4)}"

    rendered = SECTION_RE.sub(fill, text)
    problems = [name for name in sections if seen.count(name) != 1]
    problems += [f"{name} (unknown section)" for name in seen if name not in sections]
    return rendered, problems
