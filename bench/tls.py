"""What TLS costs a no-op task: p50 latency over TLS against plaintext, in one run.

Two brokers on this machine, one plaintext and one TLS-only (`Broker(tls_cert=...)`,
certificates from a CA made for the run with trustme), each with one `mesh agent run`
echo agent (the TLS one verifying the broker with ``MESH_TLS_CA``) and one client in
this process. The client alternates blocks of sequential tasks between the two, so
both sides of every ratio are measured in the same seconds (this 2-core machine's
baseline moves by up to 2x from one batch to the next: see bench/latency.py).

    .venv/bin/python -m bench.tls            # 5 x 300 tasks each side (~1 minute)
    .venv/bin/python -m bench.tls --quick    # a smoke run

Not part of ``bench.run``'s report yet: the result is printed and written to
bench/results/tls.json.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from bench.common import (
    AgentRun,
    agent_runs,
    child_env,
    dist_ms,
    progress,
    ratio,
    run_standalone,
    spread,
    write_brief,
)
from bench.drive import mesh_sequential

NAME = "tls"


@contextlib.contextmanager
def _brokers(d: Path) -> Iterator[tuple[Any, Any, Path]]:
    """A plaintext and a TLS-only broker, and the CA file that verifies the second."""
    import trustme

    from mesh.broker import Broker

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    issued.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    with (
        tempfile.TemporaryDirectory(prefix="bench-js-") as s1,
        tempfile.TemporaryDirectory(prefix="bench-js-") as s2,
        Broker(store=s1) as plain,
        Broker(store=s2, tls_cert=str(d / "server.pem"), tls_key=str(d / "server.pem")) as tls,
    ):
        yield plain, tls, d / "ca.pem"


async def _measure(plain_url: str, tls_url: str, ca: Path, n: int, repeats: int, warmup: int, block: int) -> Any:
    from mesh.client import Mesh
    from mesh.settings import Settings

    plain = await Mesh.connect(plain_url, client_id="bench-plain")
    tls = await Mesh.connect(tls_url, client_id="bench-tls", settings=Settings(tls_ca=str(ca)))
    runs = []
    pooled: dict[str, list[float]] = {"plain": [], "tls": []}
    try:
        await mesh_sequential(plain, warmup)
        await mesh_sequential(tls, warmup)
        for rep in range(repeats):
            got: dict[str, list[float]] = {"plain": [], "tls": []}
            for i in range(max(n // block, 1)):
                # alternate which side goes first, so neither always follows the other
                order = (("plain", plain), ("tls", tls)) if i % 2 == 0 else (("tls", tls), ("plain", plain))
                for key, mesh in order:
                    got[key] += await mesh_sequential(mesh, block)
            run = {k: dist_ms(v) for k, v in got.items()}
            runs.append(run)
            for k, v in got.items():
                pooled[k] += v
            progress(
                NAME,
                f"repeat {rep + 1}/{repeats}: p50 plaintext {run['plain']['p50']:.2f} ms, TLS {run['tls']['p50']:.2f} ms "
                f"(x{ratio(run['tls']['p50'], run['plain']['p50']):.2f})",
            )
    finally:
        await tls.close()
        await plain.close()
    return {
        "n": n,
        "block": block,
        "repeats": repeats,
        "runs": runs,
        "summary": {
            "plain_p50": spread([r["plain"]["p50"] for r in runs]),
            "tls_p50": spread([r["tls"]["p50"] for r in runs]),
            "ratio_tls_plain_p50": spread([ratio(r["tls"]["p50"], r["plain"]["p50"]) for r in runs]),
            "pooled": {k: dist_ms(v)["p50"] for k, v in pooled.items()}
            | {"ratio_tls_plain_p50": ratio(dist_ms(pooled["tls"])["p50"], dist_ms(pooled["plain"])["p50"])},
        },
    }


def main(quick: bool = False) -> dict[str, Any]:
    n, repeats, warmup, block = (20, 1, 5, 10) if quick else (300, 5, 30, 50)
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp, _brokers(Path(tmp)) as (plain, tls, ca):
        d = Path(tmp)
        echo = write_brief(d, "echo", ["echo"], kind="echo", capacity=64)
        agents = [
            AgentRun(echo, plain.url, "echo-plain", d),
            AgentRun(echo, tls.url, "echo-tls", d, env=child_env(MESH_TLS_CA=str(ca))),
        ]
        with agent_runs(agents):
            progress(NAME, f"plaintext and TLS brokers, one echo agent each; {repeats} x {n} tasks per side")
            result: dict[str, Any] = anyio.run(_measure, plain.url, tls.url, ca, n, repeats, warmup, block)
    result["setup"] = "2 brokers (plaintext, TLS-only), 1 echo agent process each, client in the bench process"
    return result


if __name__ == "__main__":
    run_standalone(NAME, __doc__, main)
