"""Classification and moderation through a real `nimble serve`: a tiny classifier the test
builds (no classifier ships with weights here) served from its Hugging Face folder
(PyTorch) and from its ONNX export, side by side; the official `openai` client for
/v1/moderations, httpx for /v1/classify; then the same through `nimble gateway`."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.tiny_classifier import EXAMPLES, build_classifier, export_onnx

pytestmark = pytest.mark.e2e


def test_classify_and_moderate_over_http(nimble_process: type, tmp_path: Path) -> None:
    folder = build_classifier(tmp_path / "tiny-classifier")
    onnx = export_onnx(folder, tmp_path / "tiny-classifier-onnx")
    server = nimble_process(
        [
            *("--model", str(folder), "--served-model-name", "clf"),
            *("--model", str(onnx), "--served-model-name", "clf-onnx"),
        ],
        env={"NIMBLE_CACHE_PATH": str(tmp_path / "cache")},
    ).wait_ready()
    texts = [text for text, _ in EXAMPLES]
    expected = ["safe"] * 3 + ["injection"] * 3 + ["toxic"] * 3
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        answers = {}
        for model in ("clf", "clf-onnx"):
            response = http.post("/v1/classify", json={"model": model, "input": texts})
            assert response.status_code == 200, response.text
            body = response.json()
            assert [d["label"] for d in body["data"]] == expected
            assert body["usage"]["prompt_tokens"] > len(texts)
            answers[model] = [d["probs"] for d in body["data"]]
        for torch_probs, onnx_probs in zip(answers["clf"], answers["clf-onnx"], strict=True):
            assert max(abs(a - b) for a, b in zip(torch_probs, onnx_probs, strict=True)) < 1e-4
        several = http.post("/v1/moderations", json={"input": "hello"})
        assert several.status_code == 400
        assert "several models can moderate (clf, clf-onnx)" in several.json()["error"]["message"]
        record = http.get("/v1/manifest").json()
        assert "classify" in record["endpoints"] and "moderations" in record["endpoints"]
    client = server.client()
    moderation = client.moderations.create(model="clf-onnx", input=texts)
    assert [r.flagged for r in moderation.results] == [False] * 3 + [True] * 6
    injection = moderation.results[3].categories.to_dict()
    assert injection == {"injection": True, "toxic": False}
    assert moderation.model == "clf-onnx" and moderation.id.startswith("modr-")
    # through a gateway in front of the replica: the same answers
    gateway = nimble_process(
        ["--upstream", server.base_url, "--probe-interval", "0.1"], command="gateway"
    ).wait_ready()
    with httpx.Client(base_url=gateway.base_url, timeout=60) as http:
        for path in ("/v1/classify", "/classify"):
            response = http.post(path, json={"model": "clf", "input": texts})
            assert response.status_code == 200, response.text
            assert [d["label"] for d in response.json()["data"]] == expected
    proxied = gateway.client().moderations.create(model="clf-onnx", input=texts)
    assert [r.flagged for r in proxied.results] == [False] * 3 + [True] * 6
    assert gateway.terminate() == 0
    assert server.terminate() == 0
