"""Lint, render and validate the Helm chart with every values file in its `ci/` folder.

    python deploy/check_chart.py          # what CI runs (through pytest: tests/shipping)
    python deploy/check_chart.py --helm-test-script URL   # the helm test pod's script

Helm's own code does the work (helm-python-sdk binds Helm's Go SDK: no helm binary, no
cluster); every rendered manifest is then validated with kubernetes-validate in strict mode
(unknown fields are errors) against the oldest and the newest Kubernetes the chart targets.
ServiceMonitor is a Prometheus Operator CRD without a bundled schema: it is checked for its
required fields here instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

CHART = Path(__file__).parent / "helm" / "nimble"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CRDS_WITHOUT_SCHEMA = {("monitoring.coreos.com/v1", "ServiceMonitor")}


@dataclass(frozen=True)
class Rendered:
    values_file: Path
    manifests: list[dict[str, Any]]


def values_files() -> list[Path]:
    return sorted((CHART / "ci").glob("*.yaml"))


def lint(values: dict[str, Any]) -> list[str]:
    """Lint findings at warning level or above (strict, as `helm lint --strict`)."""
    report = helm.lint(str(CHART), values, strict=True)
    problems = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return problems + list(report.get("errors") or [])


def render(values: dict[str, Any], values_file: Path | None = None) -> Rendered:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name="nimble", namespace="inference", is_install=True)
    manifests = [
        doc
        for path, text in sorted(out.items())
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    return Rendered(values_file or Path("-"), manifests)


def validate(manifest: dict[str, Any]) -> list[str]:
    """Problems of one manifest against every Kubernetes version we target."""
    kind = (manifest.get("apiVersion"), manifest.get("kind"))
    if kind in CRDS_WITHOUT_SCHEMA:
        spec = manifest.get("spec", {})
        if not spec.get("selector") or not spec.get("endpoints"):
            return [f"{kind[1]}: spec.selector and spec.endpoints are required"]
        return []
    problems = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{kind[1]} (Kubernetes {version}): {exc.message} at {exc.path}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{kind[1]} (Kubernetes {version}): no schema ({exc})")
    return problems


def check() -> list[str]:
    problems: list[str] = []
    for values_file in values_files():
        values = yaml.safe_load(values_file.read_text()) or {}
        problems += [f"{values_file.name}: lint: {p}" for p in lint(values)]
        for manifest in render(values, values_file).manifests:
            name = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
            problems += [f"{values_file.name}: {name}: {p}" for p in validate(manifest)]
    return problems


def helm_test_script(base_url: str) -> str:
    """The Python that the chart's `helm test` pod runs, aimed at `base_url` instead of the
    in-cluster Service (so the image build can run it against a real container)."""
    values = yaml.safe_load((CHART / "ci" / "unauthenticated.yaml").read_text())
    (pod,) = [m for m in render(values).manifests if m["kind"] == "Pod"]
    script = str(pod["spec"]["containers"][0]["args"][0])
    in_cluster = "http://nimble:8000/v1"
    if in_cluster not in script:
        raise ValueError(f"the test pod no longer calls {in_cluster}")
    return script.replace(in_cluster, base_url)


def main() -> int:
    if sys.argv[1:2] == ["--helm-test-script"]:
        print(helm_test_script(sys.argv[2]))
        return 0
    problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    checked = ", ".join(f.name for f in values_files())
    print(f"chart {CHART}: {'FAILED' if problems else 'ok'} ({checked})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
