"""W3C trace context: tasks carry a traceparent; children share the trace id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol as p

hex_id = st.text(alphabet="0123456789abcdef", min_size=32, max_size=32).filter(lambda s: s != "0" * 32)
hex_span = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16).filter(lambda s: s != "0" * 16)


@given(hex_id, hex_span, hex_span)
def test_children_keep_the_trace_id_with_a_new_span(trace_id: str, span: str, child_span: str) -> None:
    parent = p.traceparent(trace_id, span)
    assert parent == f"00-{trace_id}-{span}-01"
    child = p.child_traceparent(parent, child_span)
    assert child is not None and child.split("-")[1] == trace_id and child.split("-")[2] == child_span


@pytest.mark.parametrize(
    "bad", ["", "00-abc-def-01", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "00-" + "G" * 32 + "-" + "1" * 16 + "-01"]
)
def test_malformed_traceparents_are_refused(bad: str) -> None:
    with pytest.raises(p.LocalProtocolError):
        p.new_task(task_id="t", capability="c", instruction="i", requester="r", now=1.0, trace=bad)


def test_delegation_propagates_the_trace() -> None:
    root = p.new_task(
        task_id="t", capability="c", instruction="i", requester="r", now=1.0, trace=p.traceparent("a" * 32, "b" * 16)
    )
    held = p.apply(root, p.Claim(actor="x"), 2.0)
    child = p.delegate(held, child_id="k", capability="d", instruction="j", actor="x", now=3.0, span_id="c" * 16)
    assert child.trace == f"00-{'a' * 32}-{'c' * 16}-01"
    untraced = p.delegate(held, child_id="k2", capability="d", instruction="j2", actor="x", now=3.0)
    assert untraced.trace is None
