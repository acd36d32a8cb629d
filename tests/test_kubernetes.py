"""The Kubernetes example (deploy/kubernetes/), checked without a cluster.

Each manifest is validated against the Kubernetes API's JSON schemas (strict: an unknown or
misspelt field fails) by kubernetes-validate, which ships them for every Kubernetes release,
offline. KEDA's kinds are not in those schemas: they are checked against
tests/fixtures/kubernetes/keda.schema.json, the rules of KEDA's CRDs and docs for the fields
used. Then the manifests' contract with each other and with the product: names that refer to
each other exist, the settings are real ones, KEDA watches the queue the workers consume, on
the same sentinels.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from config.redis_client import sentinel_addresses
from config.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
KEDA_SCHEMA = json.loads((ROOT / "tests/fixtures/kubernetes/keda.schema.json").read_text())
# The oldest Kubernetes release still maintained upstream when the example was written; the
# schemas of later releases accept these manifests too (checked below with the newest).
KUBERNETES = "1.33"
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}


def _documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                out.append((path.name, doc))
    return out


DOCS = _documents()


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for _, d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["spec"]["template"]["spec"]["containers"])


def _env(name: str = "triage-settings", secret: str = "triage-secrets") -> dict[str, str]:
    return {**_one("ConfigMap", name)["data"], **_one("Secret", secret)["stringData"]}


def test_the_example_has_every_part() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for _, d in DOCS}
    assert kinds == {
        ("ConfigMap", "triage-settings"),
        ("Secret", "triage-secrets"),
        ("Job", "triage-migrate"),
        ("Deployment", "triage-worker"),
        ("Deployment", "triage-deliveries"),
        ("Deployment", "triage-serve"),
        ("Service", "triage-serve"),
        ("StatefulSet", "triage-chroma"),
        ("Service", "triage-chroma"),
        ("ScaledObject", "triage-worker"),
        ("TriggerAuthentication", "triage-redis"),
    }


@pytest.mark.parametrize("version", [KUBERNETES, kubernetes_validate.latest_version()])
@pytest.mark.parametrize(
    ("file", "doc"),
    [pytest.param(f, d, id=f"{f}:{d['kind']}") for f, d in DOCS if d["kind"] not in KEDA_KINDS],
)
def test_each_manifest_matches_the_kubernetes_schema(
    file: str, doc: dict[str, Any], version: str
) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{file} {doc['kind']} at {where or '.'}: {exc.message}")


@pytest.mark.parametrize(
    ("file", "doc"),
    [pytest.param(f, d, id=f"{f}:{d['kind']}") for f, d in DOCS if d["kind"] in KEDA_KINDS],
)
def test_keda_objects_match_the_keda_rules(file: str, doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, KEDA_SCHEMA)


def test_the_schemas_catch_mistakes() -> None:
    # The checks above could pass vacuously: a misspelt field and a missing required one
    # must each fail.
    worker = json.loads(json.dumps(_one("Deployment", "triage-worker")))
    worker["spec"]["template"]["spec"]["containers"][0]["envfrom"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, KUBERNETES, strict=True)
    scaled = json.loads(json.dumps(_one("ScaledObject", "triage-worker")))
    del scaled["spec"]["triggers"][0]["metadata"]["listName"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMA)
    scaled = json.loads(json.dumps(_one("ScaledObject", "triage-worker")))
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 256  # must be a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, KEDA_SCHEMA)


def test_selectors_match_their_pods() -> None:
    for kind in ("Deployment", "StatefulSet"):
        for _, doc in DOCS:
            if doc["kind"] == kind:
                wanted = doc["spec"]["selector"]["matchLabels"]
                labels = doc["spec"]["template"]["metadata"]["labels"]
                assert wanted.items() <= labels.items(), doc["metadata"]["name"]
    for service, target in (("triage-serve", "Deployment"), ("triage-chroma", "StatefulSet")):
        svc = _one("Service", service)
        pods = _one(target, service)["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= pods.items(), service
        ports = {p["name"] for c in _containers(_one(target, service)) for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports, service
    assert _one("StatefulSet", "triage-chroma")["spec"]["serviceName"] == "triage-chroma"


def test_every_app_container_reads_the_shared_settings() -> None:
    for kind, name in (
        ("Deployment", "triage-worker"),
        ("Deployment", "triage-deliveries"),
        ("Deployment", "triage-serve"),
        ("Job", "triage-migrate"),
    ):
        [container] = _containers(_one(kind, name))
        refs = [(k, v["name"]) for source in container["envFrom"] for k, v in source.items()]
        assert refs == [("configMapRef", "triage-settings"), ("secretRef", "triage-secrets")]
        assert container["image"] == _containers(_one("Deployment", "triage-worker"))[0]["image"]
        assert container["resources"]["limits"]["memory"], name
    commands = {
        name: _containers(_one(kind, name))[0]["command"]
        for kind, name in (
            ("Deployment", "triage-worker"),
            ("Deployment", "triage-deliveries"),
            ("Deployment", "triage-serve"),
            ("Job", "triage-migrate"),
        )
    }
    # Between them the two worker Deployments consume every queue: tickets and searches,
    # and the outbox's deliveries (the role's choices are the setting's own).
    roles = Settings.model_fields["worker_role"].annotation.__args__  # type: ignore[union-attr]
    assert set(roles) == {"all", "tickets", "deliveries"}
    assert commands["triage-worker"] == ["triage", "worker", "--role", "tickets"]
    assert commands["triage-deliveries"] == ["triage", "worker", "--role", "deliveries"]
    assert commands["triage-migrate"] == ["triage", "db", "upgrade"]
    assert commands["triage-serve"][:2] == ["triage", "serve"]
    serve = _containers(_one("Deployment", "triage-serve"))[0]
    assert serve["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert serve["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Listening on every interface, on the port the container declares.
    argv = serve["command"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert int(argv[argv.index("--port") + 1]) == serve["ports"][0]["containerPort"]


def test_the_settings_are_real_and_refused_until_filled_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = _env()
    names = {f"TRIAGE_{n.upper()}" for n in Settings.model_fields}
    triage = {k for k in env if k.startswith("TRIAGE_")}
    assert triage <= names, f"not settings: {sorted(triage - names)}"
    assert env["TRIAGE_ENV"] == "production"
    assert "TRIAGE_CHROMA_PATH" not in env, "one store: the Chroma server"
    # Every secret is a <placeholder>, which production refuses: nothing starts on them.
    for key, value in _one("Secret", "triage-secrets")["stringData"].items():
        assert "<" in value and ">" in value, key
    # Read as a pod reads them: from the environment (no .env file here).
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("TRIAGE_")]:
        monkeypatch.delenv(key)
    for key in triage:
        monkeypatch.setenv(key, env[key])
    with pytest.raises(SettingsError, match="placeholder"):
        load_settings()
    # With the placeholders filled in, the same settings load.
    for key in triage:
        monkeypatch.setenv(key, env[key].replace("<", "Zq9").replace(">", "x7Kp2mW4vB8nR3tY"))
    settings = load_settings()
    assert settings.uses_sentinel and settings.uses_chroma_server
    assert settings.redis_sentinel_password is not None


def test_the_chroma_url_names_the_chroma_service() -> None:
    url = urlsplit(_env()["TRIAGE_CHROMA_URL"])
    service = _one("Service", "triage-chroma")
    assert url.hostname == service["metadata"]["name"]
    assert url.port in {p["port"] for p in service["spec"]["ports"]}


def test_the_chroma_server_is_the_pinned_version_on_a_volume() -> None:
    chroma = _one("StatefulSet", "triage-chroma")
    [container] = _containers(chroma)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    [pin] = [d for d in deps if d.startswith("chromadb")]
    assert container["image"] == f"chromadb/chroma:{pin.split('==')[1]}"
    [claim] = chroma["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    assert chroma["spec"]["replicas"] == 1


def test_keda_scales_the_workers_on_their_queue_through_the_same_sentinels() -> None:
    env = _env()
    scaled = _one("ScaledObject", "triage-worker")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "triage-worker"
    assert scaled["spec"]["minReplicaCount"] >= 1
    [trigger] = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis-sentinel"
    assert meta["listName"] == env["TRIAGE_QUEUE"]
    assert meta["sentinelMaster"] == env["TRIAGE_REDIS_SENTINEL_MASTER"]
    sentinels = [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in meta["addresses"].split(","))]
    assert sentinels == sentinel_addresses(env["TRIAGE_REDIS_URL"])
    db = urlsplit(env["TRIAGE_REDIS_URL"].split(";")[0]).path.strip("/")
    assert meta["databaseIndex"] == db
    # Its credentials come from the product's Secret, by keys that exist there.
    auth = _one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    secret = _one("Secret", "triage-secrets")["stringData"]
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == "triage-secrets" and ref["key"] in secret
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {
        "password",
        "sentinelPassword",
    }
