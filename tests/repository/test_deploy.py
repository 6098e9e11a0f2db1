"""The deployment files of deploy/ (Kubernetes manifests, the compose file, the container
recipe, the systemd unit): they pass the schema validators `make lint` runs, and they agree
with the code: every setting they set exists and validates, the ports are the listeners'
defaults, the probes ask what a real service answers, the command is the console script,
and the NATS configuration is one nats-server accepts. No cluster runs here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.secrets import read_secrets
from service.cli.main import build_parser
from service.config import ENV_PREFIX, Settings, split_address
from service.rpc.auth import parse_clients
from service.runtime import running
from stackone_connect.v1 import stackone_connect_pb2 as pb
from stackone_connect.v1 import stackone_connect_pb2_grpc as pb_grpc
from tests.harness.nats import NATS_SERVER

REPOSITORY = Path(__file__).resolve().parents[2]
DEPLOY = REPOSITORY / "deploy"
KUBERNETES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
COMPOSE = DEPLOY / "compose.yaml"
BIN = Path(sys.executable).parent
LISTENERS = ("grpc", "gateway", "admin")
# The StackOne API key's calls a minute, which per-replica budgets divide (operations.md).
KEY_CALLS_PER_MINUTE = 1000

Document = dict[str, Any]


# --- Reading the files ----------------------------------------------------------------


@cache  # read once: the files do not change during a run, and the tests only read them
def _manifests() -> tuple[Document, ...]:
    return tuple(doc for path in KUBERNETES for doc in yaml.safe_load_all(path.read_text()) if doc)


def _resource(kind: str, name: str) -> Document:
    found = [m for m in _manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in deploy/kubernetes"
    return found[0]


@cache
def _compose() -> Document:
    document: Document = yaml.safe_load(COMPOSE.read_text())  # merges the `<<:` anchors
    return document


def _container(workload: Document) -> Document:
    containers: list[Document] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _replicas_of(prefix: str) -> dict[str, Document]:
    return {name: s for name, s in _compose()["services"].items() if name.startswith(prefix)}


def _kubernetes_env() -> dict[str, str]:
    """What a replica's environment holds: the ConfigMap, and the Secret's values."""
    deployment = _resource("Deployment", "stackone-connect")
    container = _container(deployment)
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env |= _resource("ConfigMap", source["configMapRef"]["name"])["data"]
    for variable in container["env"]:
        reference = variable["valueFrom"]["secretKeyRef"]
        env[variable["name"]] = _resource("Secret", reference["name"])["stringData"][
            reference["key"]
        ]
    return env


def _kubernetes_files() -> dict[str, str]:
    """The files a replica sees, by path: the Secret's items where its volume is mounted."""
    spec = _resource("Deployment", "stackone-connect")["spec"]["template"]["spec"]
    files: dict[str, str] = {}
    for mount in _container(_resource("Deployment", "stackone-connect"))["volumeMounts"]:
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        if "secret" in volume:
            secret = _resource("Secret", volume["secret"]["secretName"])["stringData"]
            for item in volume["secret"]["items"]:
                files[f"{mount['mountPath']}/{item['path']}"] = secret[item["key"]]
    return files


def _compose_env(service: Document) -> dict[str, str]:
    """A service's environment, each `${VAR:?why}` (required from the host) replaced by a
    placeholder long enough for any setting."""
    return {
        name: re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "placeholder-from-the-host-environment-0123", value)
        for name, value in service["environment"].items()
    }


def _settings_from(env: dict[str, str]) -> Settings:
    """The settings `serve` would read from `env` (the STACKONE_CONNECT_* variables)."""
    fields: dict[str, Any] = {name.removeprefix(ENV_PREFIX).lower(): v for name, v in env.items()}
    return Settings(**fields)


def _default_port(listener: str) -> int:
    default = Settings.model_fields[f"{listener}_address"].default
    return split_address(str(default))[1]


def _every_environment() -> Iterator[tuple[str, str, str]]:
    """(file, variable, value) of every variable any deployment file sets."""
    for name, value in _kubernetes_env().items():
        yield "deploy/kubernetes", name, value
    for service_name, service in _replicas_of("stackone-connect").items():
        for name, value in service["environment"].items():
            yield f"compose {service_name}", name, value
    containerfile = (DEPLOY / "Containerfile").read_text().replace("\\\n", " ")
    for line in containerfile.splitlines():
        if line.startswith("ENV "):
            for pair in line.removeprefix("ENV ").split():
                name, _, value = pair.partition("=")
                yield "Containerfile", name, value
    for line in (DEPLOY / "stackone-connect.service").read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            yield "systemd unit", name, value


# --- The validators of `make lint` -----------------------------------------------------


def _lint_commands() -> dict[str, str]:
    """The lines of `make lint`'s recipe that check deploy/, by tool, as a shell runs them
    from the repository's root."""
    makefile = (REPOSITORY / "Makefile").read_text()
    version = re.search(r"^KUBERNETES_VERSION := (\S+)$", makefile, re.M)
    recipe = makefile.split("\nlint: ", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    assert version, "the Makefile names no KUBERNETES_VERSION"
    return {
        line.split()[0].removeprefix("$(BIN)/"): line.strip()
        .replace("$(BIN)", str(BIN))
        .replace("$(KUBERNETES_VERSION)", version.group(1))
        for line in recipe
        if "deploy" in line
    }


def _run_in(root: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S602 - the Makefile's own line, globs expanded as make does
        command, shell=True, capture_output=True, text=True, cwd=root, timeout=60
    )


def test_make_lint_validates_the_deployment_files() -> None:
    """`make lint`'s yamllint, kubernetes-validate (strict) and compose-schema lines pass."""
    commands = _lint_commands()
    assert set(commands) == {"yamllint", "kubernetes-validate", "check-jsonschema"}
    for command in commands.values():
        result = _run_in(REPOSITORY, command)
        assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"


BREAKAGES = {
    "kubernetes-validate": ("kubernetes/stackone-connect.yaml", "readinessProbe:", "readyProbe:"),
    "check-jsonschema": ("compose.yaml", "stop_grace_period:", "stop_grace_perod:"),
    "yamllint": ("kubernetes/nats.yaml", "  replicas: 3\n", "  replicas: 3\n  replicas: 2\n"),
}


@pytest.mark.parametrize("tool", sorted(BREAKAGES))
def test_make_lint_fails_on_a_broken_deployment_file(tool: str, tmp_path: Path) -> None:
    """Each of `make lint`'s deploy/ lines fails on a copy of deploy/ with one file broken
    (a misspelled field, a repeated key)."""
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    shutil.copy(REPOSITORY / ".yamllint", tmp_path)
    name, good, bad = BREAKAGES[tool]
    broken = tmp_path / "deploy" / name
    broken.write_text(broken.read_text().replace(good, bad, 1))
    result = _run_in(tmp_path, _lint_commands()[tool])
    assert result.returncode != 0, f"{tool} accepted {name} with {bad!r}"


# --- The manifests against the code ----------------------------------------------------


def test_every_variable_set_is_a_setting() -> None:
    """Each STACKONE_CONNECT_* variable the deployment files set is a field of Settings."""
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    unknown = [(where, name) for where, name, _ in _every_environment() if name not in settings]
    assert unknown == []
    configmap = _resource("ConfigMap", "stackone-connect-settings")["data"]
    assert all(name.startswith(ENV_PREFIX) for name in configmap)


def test_the_settings_and_secrets_are_ones_serve_accepts() -> None:
    """The replicas' settings validate (gRPC beyond loopback with a clients file), and the
    Secret's clients file and webhook secrets parse as serve parses them."""
    kubernetes = _settings_from(_kubernetes_env())
    assert kubernetes.clients_file is not None
    assert not kubernetes.uses_emulator
    files = _kubernetes_files()
    assert str(kubernetes.clients_file) in files
    assert str(kubernetes.webhook_secrets_file) in files
    assert parse_clients(files[str(kubernetes.clients_file)].encode(), "clients.json")
    for service in _replicas_of("stackone-connect").values():
        compose = _settings_from(_compose_env(service))
        assert compose.clients_file is not None
        assert not compose.uses_emulator
        mounted = {f"/run/secrets/{name}" for name in service["secrets"]}
        assert {str(compose.clients_file), str(compose.webhook_secrets_file)} <= mounted


def test_the_secret_webhook_file_holds_secrets_the_gateway_takes(tmp_path: Path) -> None:
    """The Secret's webhook-secrets file holds secrets the gateway takes."""
    settings = _settings_from(_kubernetes_env())
    path = tmp_path / "webhook-secrets"
    path.write_text(_kubernetes_files()[str(settings.webhook_secrets_file)])
    assert read_secrets(path)


def test_ports_are_the_listeners_defaults() -> None:
    """Addresses, container ports, Services, probes and published ports use the default port
    of each listener (gRPC 50051, gateway 8080, admin 9464)."""
    ports = {listener: _default_port(listener) for listener in LISTENERS}
    for where, name, value in _every_environment():
        for listener in LISTENERS:
            if name == f"{ENV_PREFIX}{listener.upper()}_ADDRESS":
                assert split_address(value)[1] == ports[listener], (where, name)
    container = _container(_resource("Deployment", "stackone-connect"))
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == ports
    for listener in LISTENERS:
        service = _resource("Service", f"stackone-connect-{listener}")
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": "stackone-connect"}
        assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
            (ports[listener], listener)
        ]
    assert container["startupProbe"]["grpc"]["port"] == ports["grpc"]
    assert container["readinessProbe"]["httpGet"]["port"] == "admin"
    assert container["livenessProbe"]["httpGet"]["port"] == "admin"
    for service in _replicas_of("stackone-connect").values():
        published = {int(mapping.rsplit(":", 1)[1]) for mapping in service["ports"]}
        assert published == set(ports.values())
    expose = re.search(r"^EXPOSE (.+)$", (DEPLOY / "Containerfile").read_text(), re.M)
    assert expose
    assert sorted(map(int, expose.group(1).split())) == sorted(ports.values())


def _compose_health_url() -> str:
    (service,) = {
        str(s["healthcheck"]["test"][-1]) for s in _replicas_of("stackone-connect").values()
    }
    match = re.search(r"'(http://[^']+)'", service)
    assert match, service
    return match.group(1)


def _replica_here(tmp_path: Path) -> tuple[Settings, str]:
    """A replica's settings from the manifests, on free loopback ports with a SQLite log
    and the bundled emulator (no NATS or StackOne here), the Secret's files written to
    `tmp_path`; and the Secret's first client token."""
    env = _kubernetes_env() | {
        f"{ENV_PREFIX}{listener.upper()}_ADDRESS": "127.0.0.1:0" for listener in LISTENERS
    }
    env[f"{ENV_PREFIX}EVENT_LOG_URL"] = f"sqlite:///{tmp_path / 'events.db'}"
    env[f"{ENV_PREFIX}EMULATOR_ADDRESS"] = "127.0.0.1:0"
    del env[f"{ENV_PREFIX}API_KEY"]
    for number, (path, content) in enumerate(_kubernetes_files().items()):
        local = tmp_path / f"{number}-{Path(path).name}"
        local.write_text(content)
        env = {name: str(local) if value == path else value for name, value in env.items()}
    settings = _settings_from(env)
    assert settings.clients_file is not None
    (client, *_) = parse_clients(settings.clients_file.read_bytes(), "clients.json")
    assert client.token is not None
    return settings, client.token.decode()


@pytest.mark.asyncio
async def test_the_probes_ask_what_a_real_service_answers(tmp_path: Path) -> None:
    """A service run with the manifests' settings and Secret answers the startup probe
    (gRPC health SERVING), /readyz and /healthz on the admin port, the compose health check,
    and a call with the Secret's client token."""
    settings, token = _replica_here(tmp_path)
    container = _container(_resource("Deployment", "stackone-connect"))
    async with (
        running(settings) as service,
        grpc.aio.insecure_channel(service.grpc_target) as channel,
        httpx.AsyncClient(base_url=service.admin.base_url) as admin,
    ):
        probe = container["startupProbe"]["grpc"]
        request = health_pb2.HealthCheckRequest(service=probe.get("service", ""))
        health = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        for kind in ("readinessProbe", "livenessProbe"):
            answer = await admin.get(container[kind]["httpGet"]["path"])
            assert answer.status_code == 200, (kind, answer.text)
        compose_url = urlparse(_compose_health_url())
        assert compose_url.port == _default_port("admin")
        assert (await admin.get(compose_url.path)).status_code == 200
        listing = await pb_grpc.ConnectServiceStub(channel).ListAccounts(
            pb.ListAccountsRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=10
        )
        assert list(listing.accounts) == []


def test_the_command_is_the_console_script() -> None:
    """Kubernetes, compose, the container recipe and the systemd unit run the console
    script that pyproject.toml installs, with `serve`, in the image of this version."""
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    (script,) = project["scripts"]
    containerfile = (DEPLOY / "Containerfile").read_text()
    venv = re.search(r"^RUN python -m venv (\S+)$", containerfile, re.M)
    entrypoint = re.search(r"^ENTRYPOINT (.+)$", containerfile, re.M)
    cmd = re.search(r"^CMD (.+)$", containerfile, re.M)
    assert venv
    assert entrypoint
    assert cmd
    executable = f"{venv.group(1)}/bin/{script}"
    assert yaml.safe_load(entrypoint.group(1)) == [executable]
    assert yaml.safe_load(cmd.group(1)) == ["serve"]
    image = f"{script}:{project['version']}"
    container = _container(_resource("Deployment", "stackone-connect"))
    commands = [(container["image"], container["command"], container["args"])]
    commands += [
        (s["image"], s["entrypoint"], s["command"])
        for s in _replicas_of("stackone-connect").values()
    ]
    assert set(map(str, commands)) == {str((image, [executable], ["serve"]))}
    assert build_parser().parse_args(["serve"]).subcommand == "serve"
    unit = (DEPLOY / "stackone-connect.service").read_text()
    assert f"\nExecStart={executable} serve\n" in unit
    health_python = _replicas_of("stackone-connect")["stackone-connect-1"]["healthcheck"]
    assert health_python["test"][1] == f"{venv.group(1)}/bin/python"


# --- Three replicas on a three-node NATS ------------------------------------------------


def test_three_replicas_share_a_three_node_jetstream() -> None:
    """Three replicas, three NATS nodes routed to each other, a replica-3 stream on a NATS
    Service that selects them, PodDisruptionBudgets that keep a quorum, and per-replica
    StackOne budget shared as the key's limit, with a fallback share per replica."""
    deployment = _resource("Deployment", "stackone-connect")
    nats = _resource("StatefulSet", "nats")
    assert deployment["spec"]["replicas"] == nats["spec"]["replicas"] == 3
    env = _kubernetes_env()
    assert int(env[f"{ENV_PREFIX}JETSTREAM_REPLICAS"]) == 3
    assert int(env[f"{ENV_PREFIX}RATE_LIMIT"]) <= KEY_CALLS_PER_MINUTE
    assert int(env[f"{ENV_PREFIX}RATE_REPLICAS"]) == deployment["spec"]["replicas"]
    host, port = split_address(urlparse(env[f"{ENV_PREFIX}EVENT_LOG_URL"]).netloc)
    client_service = _resource("Service", host)
    assert client_service["spec"]["selector"] == nats["spec"]["selector"]["matchLabels"]
    assert [p["port"] for p in client_service["spec"]["ports"]] == [port]
    headless = _resource("Service", nats["spec"]["serviceName"])["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"]
    routes = _nats_routes(_resource("ConfigMap", "nats-config")["data"]["nats.conf"])
    service_name = nats["spec"]["serviceName"]
    assert routes == [f"nats://nats-{n}.{service_name}:6222" for n in range(3)]
    for workload, budget_name in ((deployment, "stackone-connect"), (nats, "nats")):
        budget = _resource("PodDisruptionBudget", budget_name)["spec"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert budget["selector"]["matchLabels"].items() <= labels.items()
        replicas = workload["spec"]["replicas"]
        kept = budget.get("minAvailable", replicas - budget.get("maxUnavailable", 0))
        assert 2 <= kept < replicas  # a quorum, and drains can proceed
    compose = _compose()
    assert len(_replicas_of("stackone-connect")) == len(_replicas_of("nats-")) == 3
    assert _nats_routes(compose["configs"]["nats"]["content"]) == [
        f"nats://{name}:6222" for name in _replicas_of("nats-")
    ]
    for name, node in _replicas_of("nats-").items():
        assert node["environment"]["SERVER_NAME"] == name
        assert node["networks"]["default"]["aliases"] == [host]


def _nats_routes(config: str) -> list[str]:
    block = re.search(r"routes: \[(.*?)\]", config, re.S)
    assert block, config
    return block.group(1).split()


def _nats_version() -> str:
    version = subprocess.run(
        [str(NATS_SERVER), "--version"], capture_output=True, text=True, check=True
    )
    return version.stdout.strip().removeprefix("nats-server: v")


@pytest.mark.parametrize("where", ["kubernetes", "compose"])
def test_nats_server_accepts_the_configuration(where: str, tmp_path: Path) -> None:
    """`nats-server -t` (the version the tests run, which the image tag names) accepts the
    cluster configuration, with the server name each node gets from its environment."""
    if where == "kubernetes":
        nats = _container(_resource("StatefulSet", "nats"))
        config = _resource("ConfigMap", "nats-config")["data"]["nats.conf"]
        env = {"POD_NAME": "nats-0"}
        images = {nats["image"]}
    else:
        config = _compose()["configs"]["nats"]["content"].replace("$$", "$")
        env = {"SERVER_NAME": "nats-1"}
        images = {node["image"] for node in _replicas_of("nats-").values()}
    assert images == {f"nats:{_nats_version()}-alpine"}
    path = tmp_path / "nats.conf"
    path.write_text(config)
    result = subprocess.run(
        [str(NATS_SERVER), "-t", "-c", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
