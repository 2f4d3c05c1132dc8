"""The Helm chart: lint, render and strict validation with every values file in ci/, and
what the rendered manifests must hold (probes, GPU, security context, secrets, tests, HPA)."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from deploy import check_chart
from deploy.check_chart import Rendered, render, validate

CI = {path.stem: yaml.safe_load(path.read_text()) or {} for path in check_chart.values_files()}


def rendered(name: str) -> Rendered:
    return render(copy.deepcopy(CI[name]))


def of_kind(r: Rendered, kind: str) -> list[dict[str, Any]]:
    return [m for m in r.manifests if m["kind"] == kind]


def named(r: Rendered, kind: str, name: str) -> dict[str, Any]:
    (found,) = [m for m in of_kind(r, kind) if m["metadata"]["name"] == name]
    return found


def deployment(r: Rendered, name: str = "nimble") -> dict[str, Any]:
    return named(r, "Deployment", name)


def container(r: Rendered, name: str = "nimble") -> dict[str, Any]:
    spec = deployment(r, name)["spec"]["template"]["spec"]
    (found,) = [c for c in spec["containers"] if c["name"] == name.removeprefix("nimble-")]
    return dict(found)


def env(r: Rendered) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(r)["env"]}


def test_every_ci_values_file_lints_renders_and_validates_strictly() -> None:
    assert set(CI) >= {"default", "gateway", "gpu", "production", "unauthenticated"}
    assert check_chart.check() == []


def test_strict_validation_catches_an_unknown_field() -> None:
    manifest = copy.deepcopy(deployment(rendered("default")))
    manifest["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    assert any("livenessProbes" in problem for problem in validate(manifest))


@pytest.mark.parametrize("name", sorted(CI))
def test_probes_point_at_the_health_endpoints(name: str) -> None:
    c = container(rendered(name))
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert str(ports["management"]) == env(rendered(name))["NIMBLE_MANAGEMENT_PORT"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/v1/health/live", "port": "management"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v1/health/ready", "port": "management"}
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/v1/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model load


def test_gpu_profile_requests_a_gpu_and_the_default_does_not() -> None:
    gpu = rendered("gpu")
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = deployment(gpu)["spec"]["template"]["spec"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert container(gpu)["image"].endswith(":0.1.0-cuda")
    assert env(gpu)["NIMBLE_ENGINE"] == "vllm"
    for name in ("default", "production", "unauthenticated"):
        assert "nvidia.com/gpu" not in str(container(rendered(name))["resources"])


@pytest.mark.parametrize("name", sorted(CI))
def test_non_root_read_only_no_privileges(name: str) -> None:
    r = rendered(name)
    pods = [d["spec"]["template"]["spec"] for d in of_kind(r, "Deployment")]
    assert all(pod["securityContext"]["runAsNonRoot"] is True for pod in pods)
    assert all(pod["automountServiceAccountToken"] is False for pod in pods)
    containers = [c for pod in pods for c in pod["containers"] + pod.get("initContainers", [])]
    containers += [c for t in of_kind(r, "Pod") for c in t["spec"]["containers"]]
    for c in containers:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["runAsNonRoot"] is True
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert {"name": "tmp", "mountPath": "/tmp"} in c.get(
            "volumeMounts", [{"name": "tmp", "mountPath": "/tmp"}]
        )


def test_secrets_live_only_in_secrets() -> None:
    values = CI["default"]
    r = rendered("default")
    secrets = of_kind(r, "Secret")
    stored = {
        key: base64.b64decode(value).decode() for s in secrets for key, value in s["data"].items()
    }
    assert stored["keys.yaml"] == values["auth"]["keysFile"]
    assert stored["test-key"] == values["auth"]["testKey"]
    for manifest in r.manifests:
        if manifest["kind"] == "Secret":
            continue
        text = yaml.safe_dump(manifest)
        assert values["auth"]["testKey"] not in text, manifest["kind"]
        assert "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8" not in text
    # the server reads the key file from the Secret; the test pod gets the key by reference
    assert env(r)["NIMBLE_API_KEYS_FILE"] == "/etc/nimble/keys/keys.yaml"
    volumes = deployment(r)["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "keys",
        "secret": {"secretName": "nimble-keys", "defaultMode": 0o400},
    } in volumes
    (test_pod,) = of_kind(r, "Pod")
    (key_env,) = test_pod["spec"]["containers"][0]["env"]
    assert key_env["valueFrom"]["secretKeyRef"] == {"name": "nimble-test-key", "key": "test-key"}


def test_keys_are_required_unless_explicitly_off() -> None:
    with pytest.raises(helm.HelmRenderError, match="API keys are on"):
        render({})
    off = rendered("unauthenticated")
    assert env(off)["NIMBLE_ALLOW_UNAUTHENTICATED"] == "true"
    assert "NIMBLE_API_KEYS_FILE" not in env(off) and not of_kind(off, "Secret")
    existing = rendered("production")
    assert not [s for s in of_kind(existing, "Secret") if "keys.yaml" in s["data"]]
    volumes = deployment(existing)["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("secret", {}).get("secretName") == "nimble-api-keys" for v in volumes)


def test_helm_test_pod_lists_models_and_chats() -> None:
    (pod,) = of_kind(rendered("default"), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "/models" in script and "/chat/completions" in script
    assert "http://nimble:8000/v1" in script and '"smollm2-135m-instruct"' in script
    compile(script, "helm-test", "exec")  # the rendered Python is valid


def test_production_objects() -> None:
    r = rendered("production")
    (hpa,) = of_kind(r, "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "nimble_num_requests_waiting"
    assert "replicas" not in deployment(r)["spec"]  # the HPA owns the replica count
    (monitor,) = of_kind(r, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0] == {
        "port": "management",
        "path": "/v1/metrics",
        "interval": "30s",
    }
    (policy,) = of_kind(r, "NetworkPolicy")
    assert [rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]] == [
        "http",
        "management",
    ]
    (pdb,) = of_kind(r, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    (ingress,) = of_kind(r, "Ingress")
    assert ingress["spec"]["tls"][0]["hosts"] == ["llm.example.com"]
    # several replicas: a cache claim per pod, none shared
    assert not of_kind(r, "PersistentVolumeClaim")
    (cache,) = [v for v in deployment(r)["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache"]
    claim = cache["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"] and claim["storageClassName"] == "standard"
    assert claim["resources"]["requests"]["storage"] == "20Gi"


def test_cache_prefill_init_step() -> None:
    r = rendered("gpu")
    pod = deployment(r)["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (main,) = pod["containers"]
    assert init["args"] == ["download"]  # the image's entrypoint is `nimble`
    # the init container selects the same profile as nimble: same models, engine, profile,
    # hub token and GPUs
    init_env = {e["name"]: e for e in init["env"]}
    for name in ("NIMBLE_MODEL", "NIMBLE_CACHE_PATH", "NIMBLE_ENGINE", "NIMBLE_HF_TOKEN"):
        assert init_env[name] in main["env"], name
    assert init_env["NIMBLE_MODEL"]["value"] == ",".join(CI["gpu"]["models"])
    assert init_env["NIMBLE_CACHE_PATH"]["value"] == "/cache"
    assert init_env["NIMBLE_HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf-token"
    assert init["resources"] == main["resources"]
    assert init["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env(r)["NIMBLE_CACHE_PATH"] == "/cache"
    assert "initContainers" not in deployment(rendered("default"))["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    "bad",
    [
        {"replicaCount": "two"},
        {"cache": {"type": "nfs"}},
        {"extraEnv": {"NIMBLE_API_KEYS_FILE": "/x"}},
        {"models": []},
        {"unknownTopLevel": 1},
    ],
)
def test_schema_refuses_bad_values(bad: dict[str, Any]) -> None:
    values = {**copy.deepcopy(CI["unauthenticated"]), **bad}
    with pytest.raises(helm.HelmError):
        helm.Chart.load(str(check_chart.CHART)).validate_schema(values)
    with pytest.raises(helm.HelmError):
        render(values, Path("bad.yaml"))


def test_the_helm_test_script_can_be_aimed_at_a_container() -> None:
    script = check_chart.helm_test_script("http://127.0.0.1:18000/v1")
    assert 'base = "http://127.0.0.1:18000/v1"' in script
    compile(script, "helm-test", "exec")
