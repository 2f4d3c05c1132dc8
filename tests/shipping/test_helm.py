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
from tests.shipping.images import made_images, project_version

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


def test_the_chart_defaults_to_the_images_make_builds() -> None:
    """`make image` / `make image-cuda` tag what the chart runs unless told otherwise; the
    deployment record (NIMBLE_IMAGE) names the image that runs."""
    made = made_images()
    chart = yaml.safe_load((check_chart.CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project_version()
    for name, image in (("default", made["cpu"]), ("gpu", made["cuda"])):
        r = rendered(name)
        assert container(r)["image"] == image, name
        assert env(r)["NIMBLE_IMAGE"] == image, name
        (test_pod,) = of_kind(r, "Pod")
        assert test_pod["spec"]["containers"][0]["image"] == image
    pushed = render(merged("default", image={"repository": "registry.example.com/team/nimble"}))
    version = project_version()
    assert container(pushed)["image"] == f"registry.example.com/team/nimble:{version}"
    assert env(pushed)["NIMBLE_IMAGE"] == f"registry.example.com/team/nimble:{version}"


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
    (cache,) = [
        v for v in deployment(r)["spec"]["template"]["spec"]["volumes"] if v["name"] == "cache"
    ]
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
        {"cache": {"type": "persistentVolumeClaim", "accessMode": "ReadOnlyMany"}},
        {"gateway": {"enabled": True, "routingPolicy": "random"}},
        {"gateway": {"extraEnv": {"NIMBLE_UPSTREAM_API_KEY": "plain"}}},
        {"networkPolicy": {"allowDNS": "yes"}},
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


# --- many replicas, one endpoint (issue 17) ---


def merged(base: str, **overrides: Any) -> dict[str, Any]:
    """A ci/ values file with some top-level sections replaced or merged one level deep."""
    values = copy.deepcopy(CI[base])
    for key, value in overrides.items():
        old = values.get(key)
        values[key] = (
            {**old, **value} if isinstance(old, dict) and isinstance(value, dict) else value
        )
    return values


def pod_labels(manifest: dict[str, Any]) -> dict[str, str]:
    if manifest["kind"] == "Pod":
        return dict(manifest["metadata"]["labels"])
    return dict(manifest["spec"]["template"]["metadata"]["labels"])


def selects(match_labels: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in match_labels.items())


def admitted(policy: dict[str, Any], port: str, labels: dict[str, str]) -> bool:
    """Whether a pod of the release namespace with `labels` may reach `port` under `policy`."""
    for rule in policy["spec"]["ingress"]:
        if port in [p["port"] for p in rule["ports"]]:
            for peer in rule["from"]:
                same_namespace = set(peer) == {"podSelector"}
                if same_namespace and selects(peer["podSelector"].get("matchLabels", {}), labels):
                    return True
    return False


def egress_ports(policy: dict[str, Any]) -> list[tuple[int | str, str]]:
    return [(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]]


def gateway_env(r: Rendered) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in container(r, "nimble-gateway")["env"]
    }


def test_the_gateway_renders_in_front_of_the_replicas() -> None:
    r = rendered("gateway")
    gateway = container(r, "nimble-gateway")
    assert gateway["args"] == ["gateway"]
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/v1/health/live", "port": "management"}
    assert gateway["readinessProbe"]["httpGet"] == {
        "path": "/v1/health/ready",
        "port": "management",
    }
    env = gateway_env(r)
    assert env["NIMBLE_UPSTREAM_DNS"] == "nimble-replicas.inference.svc.cluster.local:8000"
    assert env["NIMBLE_ROUTING_POLICY"] == "least-loaded"
    assert env["NIMBLE_MANAGEMENT_PORT"] == "9000" and env["NIMBLE_PORT"] == "8000"
    assert env["NIMBLE_API_KEYS_FILE"] == "/etc/nimble/keys/keys.yaml"
    assert env["NIMBLE_UPSTREAM_API_KEY"]["secretKeyRef"] == {
        "name": "nimble-gateway-upstream-key",
        "key": "api-key",
    }
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://otel.example.com"
    assert deployment(r, "nimble-gateway")["spec"]["replicas"] == 2
    volumes = deployment(r, "nimble-gateway")["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "keys",
        "secret": {"secretName": "nimble-api-keys", "defaultMode": 0o400},
    } in volumes
    # each selector takes its own pods only
    gateway_pods, replica_pods = (
        pod_labels(deployment(r, "nimble-gateway")),
        pod_labels(deployment(r)),
    )
    service = named(r, "Service", "nimble-gateway")
    assert selects(service["spec"]["selector"], gateway_pods)
    assert not selects(service["spec"]["selector"], replica_pods)
    assert not selects(deployment(r)["spec"]["selector"]["matchLabels"], gateway_pods)
    assert [p["port"] for p in service["spec"]["ports"]] == [8000, 9000]
    headless = named(r, "Service", "nimble-replicas")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is False
    assert selects(headless["selector"], replica_pods)
    assert not selects(headless["selector"], gateway_pods)
    assert headless["ports"][0]["port"] == 8000
    (ingress,) = of_kind(r, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "nimble-gateway", "port": {"name": "http"}}
    (test_pod,) = of_kind(r, "Pod")
    assert 'base = "http://nimble-gateway:8000/v1"' in test_pod["spec"]["containers"][0]["args"][0]


def test_no_gateway_unless_enabled() -> None:
    r = rendered("production")
    assert [d["metadata"]["name"] for d in of_kind(r, "Deployment")] == ["nimble"]
    assert [s["metadata"]["name"] for s in of_kind(r, "Service")] == ["nimble"]
    assert [p["metadata"]["name"] for p in of_kind(r, "NetworkPolicy")] == ["nimble"]
    (ingress,) = of_kind(r, "Ingress")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "nimble"


def test_the_gateway_needs_a_service_key_while_the_replicas_have_keys() -> None:
    values = merged("gateway", gateway={"upstreamKey": {"secret": ""}})
    with pytest.raises(helm.HelmRenderError, match=r"set gateway\.upstreamKey\.secret"):
        render(values)
    off = render(
        merged(
            "gateway", auth={"allowUnauthenticated": True}, gateway={"upstreamKey": {"secret": ""}}
        )
    )
    assert gateway_env(off)["NIMBLE_ALLOW_UNAUTHENTICATED"] == "true"
    assert "NIMBLE_UPSTREAM_API_KEY" not in gateway_env(
        off
    ) and "NIMBLE_API_KEYS_FILE" not in gateway_env(off)
    own = render(
        merged(
            "gateway", gateway={"keysSecret": "gateway-client-keys", "routingPolicy": "round-robin"}
        )
    )
    volumes = deployment(own, "nimble-gateway")["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "keys",
        "secret": {"secretName": "gateway-client-keys", "defaultMode": 0o400},
    } in volumes
    assert gateway_env(own)["NIMBLE_ROUTING_POLICY"] == "round-robin"


@pytest.mark.parametrize(
    "scale",
    [{"replicaCount": 2}, {"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3}}],
)
def test_several_replicas_cannot_share_a_read_write_once_claim(scale: dict[str, Any]) -> None:
    values = merged("default", cache={"type": "persistentVolumeClaim"}, **scale)
    with pytest.raises(
        helm.HelmRenderError, match="cannot share one ReadWriteOnce PersistentVolumeClaim"
    ):
        render(values)
    shared = render(
        {**values, "cache": {"type": "persistentVolumeClaim", "accessMode": "ReadWriteMany"}}
    )
    (pvc,) = of_kind(shared, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    spec = deployment(shared)["spec"]
    assert "strategy" not in spec  # rolling updates: every node mounts the claim
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "nimble-cache"}} in spec[
        "template"
    ]["spec"]["volumes"]
    per_pod = render({**values, "cache": {"type": "ephemeral", "size": "30Gi"}})
    assert not of_kind(per_pod, "PersistentVolumeClaim")
    (cache,) = [
        v
        for v in deployment(per_pod)["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "cache"
    ]
    claim = cache["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert (
        claim["accessModes"] == ["ReadWriteOnce"]
        and claim["resources"]["requests"]["storage"] == "30Gi"
    )
    for manifest in shared.manifests + per_pod.manifests:
        assert validate(manifest) == [], manifest["kind"]


def test_one_replica_on_a_read_write_once_claim_is_replaced_not_surged() -> None:
    r = render(merged("default", cache={"type": "persistentVolumeClaim"}))
    (pvc,) = of_kind(r, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert deployment(r)["spec"]["strategy"] == {"type": "Recreate"}
    assert "strategy" not in deployment(rendered("default"))["spec"]  # emptyDir: rolling


@pytest.mark.parametrize("name", ["production", "gateway"])
def test_the_network_policy_admits_the_helm_test_pod_and_the_gateway(name: str) -> None:
    r = rendered(name)
    (test_pod,) = of_kind(r, "Pod")
    replicas = named(r, "NetworkPolicy", "nimble")
    # the test pod is no replica: not under their policy, selectors or disruption budget
    assert not selects(replicas["spec"]["podSelector"]["matchLabels"], pod_labels(test_pod))
    assert admitted(replicas, "http", pod_labels(test_pod))
    assert not admitted(replicas, "http", {"app.kubernetes.io/name": "other"})
    if name == "gateway":
        gateway = named(r, "NetworkPolicy", "nimble-gateway")
        assert admitted(gateway, "http", pod_labels(test_pod))
        assert admitted(replicas, "http", pod_labels(deployment(r, "nimble-gateway")))
        to_replicas = gateway["spec"]["egress"][0]
        assert to_replicas["ports"] == [{"port": 8000, "protocol": "TCP"}]
        assert selects(
            to_replicas["to"][0]["podSelector"]["matchLabels"], pod_labels(deployment(r))
        )
        assert (
            gateway["spec"]["ingress"][0]["from"][0] == CI["gateway"]["networkPolicy"]["apiFrom"][0]
        )


def test_network_policy_egress_is_configured() -> None:
    on = {"enabled": True}
    r = render(merged("default", networkPolicy=on))
    assert egress_ports(named(r, "NetworkPolicy", "nimble")) == [(53, "UDP"), (53, "TCP")]
    r = render(merged("default", networkPolicy={**on, "allowDNS": False}))
    assert named(r, "NetworkPolicy", "nimble")["spec"]["egress"] == []
    mirror = {
        "ports": [{"port": 8080, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}],
    }
    r = render(
        merged(
            "default",
            networkPolicy={**on, "allowModelDownloads": True, "egress": [mirror]},
            extraEnv={"NIMBLE_OTLP_ENDPOINT": "http://collector.monitoring:4318/v1/traces"},
        )
    )
    policy = named(r, "NetworkPolicy", "nimble")
    assert egress_ports(policy) == [
        (53, "UDP"),
        (53, "TCP"),
        (4318, "TCP"),
        (8080, "TCP"),
        (443, "TCP"),
    ]
    assert mirror in policy["spec"]["egress"]
    assert "to" not in policy["spec"]["egress"][1]  # no otlpTo: the collector may be anywhere
    r = render(
        merged(
            "default",
            networkPolicy=on,
            extraEnv={"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel.example.com"},
        )
    )
    assert (443, "TCP") in egress_ports(named(r, "NetworkPolicy", "nimble"))
    # the ci file: the collector's port to the monitoring namespace only, downloads over 443
    policy = named(rendered("gateway"), "NetworkPolicy", "nimble")
    (otlp,) = [rule for rule in policy["spec"]["egress"] if rule["ports"][0]["port"] == 4318]
    assert otlp["to"] == CI["gateway"]["networkPolicy"]["otlpTo"]
    assert (443, "TCP") in egress_ports(policy)


def test_admission_is_the_engines_batch_unless_set() -> None:
    # a fixed NIMBLE_MAX_RUNNING would cap a GPU that runs hundreds of sequences at that number
    for name in ("default", "gpu"):
        assert "NIMBLE_MAX_RUNNING" not in env(rendered(name))
    assert env(render(merged("default", maxRunning=8)))["NIMBLE_MAX_RUNNING"] == "8"


def test_an_adapter_volume_is_mounted_read_only_and_watched() -> None:
    assert "NIMBLE_LORA_DIR" not in env(rendered("default"))
    source = {"persistentVolumeClaim": {"claimName": "team-adapters", "readOnly": True}}
    r = render(
        merged("default", adapters={"enabled": True, "volume": source, "runtimeLoading": True})
    )
    values = env(r)
    assert (values["NIMBLE_LORA_DIR"], values["NIMBLE_LORA_POLL_INTERVAL"]) == ("/adapters", "5")
    assert values["NIMBLE_RUNTIME_ADAPTERS"] == "true"
    assert {"name": "adapters", "mountPath": "/adapters", "readOnly": True} in container(r)[
        "volumeMounts"
    ]
    assert {"name": "adapters", **source} in deployment(r)["spec"]["template"]["spec"]["volumes"]
    for manifest in r.manifests:
        assert validate(manifest) == [], manifest["kind"]
    with pytest.raises(helm.HelmRenderError, match=r"adapters\.enabled needs adapters\.volume"):
        render(merged("default", adapters={"enabled": True}))
