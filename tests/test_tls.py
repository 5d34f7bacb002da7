"""TLS between clients and the broker (issue 14, item 4): `mesh broker --tls-cert/--tls-key`,
clients verifying it with `--tls-ca` / `MESH_TLS_CA`, and a clear one-line refusal for
every way it can be wrong. Certificates come from a CA made per test module (trustme)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from mesh.broker import Broker, free_ports
from mesh.bus import Unreachable, connect
from mesh.settings import TlsError, client_tls
from mesh.testing import write_brief


@dataclass
class Pki:
    """A CA and a server certificate for 127.0.0.1 and localhost, as PEM files."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    tmp = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    pki = Pki(ca=tmp / "ca.pem", cert=tmp / "server.pem", key=tmp / "server-key.pem", other_ca=tmp / "other-ca.pem")
    ca.cert_pem.write_to_path(str(pki.ca))
    other.cert_pem.write_to_path(str(pki.other_ca))
    issued.private_key_pem.write_to_path(str(pki.key))
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(pki.cert), append=True)
    return pki


@pytest.fixture(scope="module")
def tls_broker(pki: Pki) -> Iterator[Broker]:
    with Broker(tls_cert=str(pki.cert), tls_key=str(pki.key)) as broker:
        yield broker


def mesh(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("MESH_SERVER", "MESH_TLS_CA")}
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**environ, **(env or {})},
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# --- refusals ------------------------------------------------------------------------


def test_a_plaintext_client_is_refused_by_a_tls_only_broker(tls_broker: Broker) -> None:
    """The broker itself refuses a client that does not start TLS (any client, not ours)."""
    with socket.create_connection((tls_broker.host, tls_broker.port), timeout=5) as s:
        info = s.recv(4096)
        assert b'"tls_required":true' in info
        s.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        reply = b""
        while chunk := s.recv(4096):  # the server takes that for a broken handshake: it closes
            reply += chunk
    assert b"PONG" not in reply and b"+OK" not in reply, reply


def test_a_client_without_the_ca_is_told_to_give_it(tls_broker: Broker) -> None:
    plain = tls_broker.url.replace("tls://", "nats://")
    line = one_line_error(mesh("agents", "--server", plain))
    assert "requires TLS" in line and "--tls-ca" in line and "MESH_TLS_CA" in line, line


def test_a_client_with_the_wrong_ca_is_refused(tls_broker: Broker, pki: Pki) -> None:
    line = one_line_error(mesh("agents", "--server", tls_broker.url, "--tls-ca", str(pki.other_ca)))
    assert "not trusted" in line and "CA" in line, line
    line = one_line_error(mesh("agents", "--server", tls_broker.url, env={"MESH_TLS_CA": str(pki.other_ca)}))
    assert "not trusted" in line, line


def test_a_certificate_for_another_name_is_refused(tmp_path: Path, pki: Pki) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("mesh.example.com")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    issued.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    with Broker(tls_cert=str(tmp_path / "server.pem"), tls_key=str(tmp_path / "server.pem")) as broker:
        line = one_line_error(mesh("agents", "--server", broker.url, "--tls-ca", str(tmp_path / "ca.pem")))
    assert "not trusted" in line and "mismatch" in line, line


def test_asking_for_tls_from_a_plaintext_broker_is_refused(broker: Broker, pki: Pki) -> None:
    """--tls-ca means TLS or nothing: a broker that does not ask for it is not used."""
    line = one_line_error(mesh("agents", "--server", broker.url, "--tls-ca", str(pki.ca)))
    assert "does not use TLS" in line, line
    line = one_line_error(mesh("agents", "--server", broker.url.replace("nats://", "tls://")))
    assert "does not use TLS" in line, line


@pytest.mark.parametrize("problem", ["missing", "unreadable", "not-pem"])
def test_a_bad_ca_file_names_the_file(tmp_path: Path, problem: str) -> None:
    path = tmp_path / "ca.pem"
    if problem != "missing":
        path.write_text("not a certificate\n")
    if problem == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        path.chmod(0)
    with pytest.raises(TlsError, match=f"TLS CA file {path}: "):
        client_tls(str(path))
    line = one_line_error(mesh("agents", "--server", "tls://127.0.0.1:9", "--tls-ca", str(path)))
    assert str(path) in line, line


@pytest.mark.parametrize("problem", ["missing-cert", "missing-key", "mismatched", "only-cert"])
def test_mesh_broker_refuses_unusable_certificate_files(tmp_path: Path, pki: Pki, problem: str) -> None:
    cert, key = str(pki.cert), str(pki.key)
    if problem == "missing-cert":
        cert = str(tmp_path / "nope.pem")
    elif problem == "missing-key":
        key = str(tmp_path / "nope-key.pem")
    elif problem == "mismatched":
        trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
        key = str(tmp_path / "other-key.pem")
    port, http = free_ports(2)
    args = ["broker", "--port", str(port), "--http-port", str(http), "--store", str(tmp_path / "js")]
    args += ["--tls-cert", cert] if problem == "only-cert" else ["--tls-cert", cert, "--tls-key", key]
    line = one_line_error(mesh(*args, timeout=30))
    expected = {"missing-cert": "no such file", "missing-key": "no such file", "mismatched": "cannot be used"}
    assert expected.get(problem, "--tls-key") in line, line


async def test_connect_reports_the_wrong_ca_at_once(tls_broker: Broker, pki: Pki) -> None:
    """nats-py would retry (and hang closing the failed handshake); a certificate that
    fails once fails always, so the first failure is the answer."""
    with pytest.raises(Unreachable, match="not trusted"):
        await connect(tls_broker.url, name="wrong-ca", tls=client_tls(str(pki.other_ca)))


# --- a task over TLS -------------------------------------------------------------------


def wait_for_line(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> str:
    """The log of another process, once it holds ``text`` (nothing to await across
    processes: poll the file, bounded in time)."""
    deadline = time.monotonic() + timeout
    while text not in (log := path.read_text()):
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout}s:\n{log}"
        time.sleep(0.05)
    return log


def test_a_task_completes_over_tls_with_the_embedded_broker(tmp_path: Path, pki: Pki) -> None:
    """`mesh broker --tls-cert/--tls-key`, an agent and `mesh submit` with MESH_TLS_CA."""
    port, http = free_ports(2)
    log = (tmp_path / "broker.log").open("wb")
    tls = ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    broker = subprocess.Popen(
        [sys.executable, "-m", "mesh", "broker", "--port", str(port), "--http-port", str(http), "--store", "js", *tls],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"tls://127.0.0.1:{port}"
    env = {"MESH_TLS_CA": str(pki.ca), "MESH_SERVER": url}
    agent = None
    try:
        # The broker prints how to connect once its own setup connection (over TLS,
        # pinned to its certificate) has made the mesh's streams: a line in its log.
        broker_log = wait_for_line(tmp_path / "broker.log", "agents connect with", broker)
        assert f"--server {url} --tls-ca" in broker_log, broker_log
        brief = write_brief(tmp_path, "echoer", ["echo"], kind="echo")
        with (tmp_path / "agent.log").open("wb") as agent_log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "mesh", "agent", "run", str(brief), "--id", "echoer"],
                stdout=agent_log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )
        done = mesh("submit", "echo", "over tls", "--wait", "--claim-timeout", "30s", env=env)
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{(tmp_path / 'agent.log').read_text()}"
        assert "over tls" in done.stdout
    finally:
        for proc in (agent, broker):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        log.close()
