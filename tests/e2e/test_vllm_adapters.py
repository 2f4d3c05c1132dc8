"""LoRA adapters through `nimble serve` on a supervised vLLM (the stand-in,
tests/support/vllm_standin.py): a `--lora` adapter on vLLM's command line and in
/v1/models, adapters loaded and unloaded through nimble's `/v1/load_lora_adapter` (the
official openai client for the requests), refusals naming the file, and an adapter in a
watched `--lora-dir` replaced while a stream on it runs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from nimble.models.files import sha256_of
from tests.e2e.test_vllm_serve import setup as vllm_model  # the stand-in behind nimble
from tests.support.peft_adapters import write_peft

pytestmark = pytest.mark.e2e


def standin_log(tmp_path: Path, key: str) -> list[dict[str, Any]]:
    rows = [json.loads(x) for x in (tmp_path / "standin.jsonl").read_text().splitlines()]
    return [row for row in rows if key in row]


def mark(name: str, folder: Path) -> str:
    """What the stand-in's answers for the adapter's current weights start with."""
    sha8 = sha256_of(folder / "adapter_model.safetensors")[:8]
    return f"[{name}@{sha8}|{sha8}] "


def test_adapters_on_the_command_line_and_loaded_through_nimble(
    nimble_process: type, tmp_path: Path
) -> None:
    args, env = vllm_model(tmp_path)
    pirate = write_peft(tmp_path / "pirate", seed=1)
    lora = ["--lora", f"pirate={pirate}", "--runtime-adapters", "--max-lora-rank", "8"]
    server = nimble_process([*args, *lora], env=env).wait_ready()
    client = server.client()

    (launch,) = standin_log(tmp_path, "argv")
    argv = launch["argv"]
    assert "--enable-lora" in argv and argv[argv.index("--max-lora-rank") + 1] == "8"
    (module,) = argv[argv.index("--lora-modules") + 1 :]
    assert json.loads(module)["path"] == str(pirate)
    listed = {m.id: m.model_extra or {} for m in client.models.list().data}
    assert listed["pirate"].get("parent") == "gpu-llama"
    answer = client.chat.completions.create(
        model="pirate", messages=[{"role": "user", "content": "ahoy"}], max_tokens=2
    )
    assert answer.choices[0].message.content == mark("pirate", pirate) + "<|user|> "
    assert answer.model == "pirate"
    base = client.chat.completions.create(
        model="gpu-llama", messages=[{"role": "user", "content": "ahoy"}], max_tokens=2
    )
    assert base.choices[0].message.content == "<|user|> ahoy "

    poet = write_peft(tmp_path / "poet", seed=2)
    loaded = httpx.post(
        server.base_url + "/v1/load_lora_adapter",
        json={"lora_name": "poet", "lora_path": str(poet)},
        timeout=30,
    )
    assert loaded.status_code == 200, loaded.text
    assert loaded.text == "Success: LoRA adapter 'poet' added successfully."
    stream = client.completions.create(model="poet", prompt="one two", max_tokens=3, stream=True)
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert text == mark("poet", poet) + "one two "
    assert "poet" in {m.id for m in client.models.list().data}

    big = write_peft(tmp_path / "big", rank=16)
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    for name, path, says in (
        ("big", big, "LoRA rank 16 is over max_lora_rank 8"),
        ("tiny", gguf, "a GGUF adapter; the vllm engine takes PEFT adapter folders"),
    ):
        refused = httpx.post(
            server.base_url + "/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": str(path)},
            timeout=30,
        )
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["param"] == "lora_path"
        assert error["message"].startswith(str(path)) and says in error["message"]

    unloaded = httpx.post(
        server.base_url + "/v1/unload_lora_adapter", json={"lora_name": "poet"}, timeout=30
    )
    assert unloaded.status_code == 200, unloaded.text
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="poet", prompt="one", max_tokens=1)
    deadline = time.monotonic() + 60
    while not standin_log(tmp_path, "running"):  # nimble frees vLLM's copy right after
        assert time.monotonic() < deadline, "the adapter never left vLLM"
        time.sleep(0.05)  # polling interval
    (unload,) = standin_log(tmp_path, "running")
    assert unload["body"]["lora_name"] == mark("poet", poet)[1:].split("|")[0]
    assert server.terminate() == 0


def test_an_adapter_replaced_in_the_watched_folder_keeps_its_running_stream(
    nimble_process: type, tmp_path: Path
) -> None:
    args, env = vllm_model(tmp_path)
    env["STANDIN_TOKEN_DELAY"] = "0.02"
    folder = write_peft(tmp_path / "adapters" / "pirate", seed=1)
    old = mark("pirate", folder)
    watch = ["--lora-dir", str(tmp_path / "adapters"), "--lora-poll-interval", "0.1"]
    server = nimble_process([*args, *watch], env=env).wait_ready()
    client = server.client()
    # 400 tokens at 0.02 s: a stream of 8 s, far longer than a replacement takes (0.3 s here)
    stream = client.completions.create(model="pirate", prompt="x", max_tokens=400, stream=True)
    pieces = iter(chunk.choices[0].text for chunk in stream if chunk.choices)
    before = [next(pieces)]
    assert before == [old]

    write_peft(folder, seed=2)  # new weights, same folder: the watcher replaces it
    new = mark("pirate", folder)
    deadline = time.monotonic() + 60
    while True:
        answer = client.completions.create(model="pirate", prompt="x", max_tokens=1)
        if answer.choices[0].text == new:
            break
        assert answer.choices[0].text == old
        assert time.monotonic() < deadline, "the replaced adapter never answered"
        time.sleep(0.1)  # polling interval: the watcher loads what stayed unchanged for a look
    assert not standin_log(tmp_path, "running")  # the old version is still in vLLM
    after = list(pieces)  # the running stream, to its end, after the switch
    assert after
    assert "".join(before + after) == (old + "x ") * 200  # every token on the old version

    deadline = time.monotonic() + 60
    while not standin_log(tmp_path, "running"):
        assert time.monotonic() < deadline, "the old version never left vLLM"
        time.sleep(0.05)  # polling interval
    (unload,) = standin_log(tmp_path, "running")
    assert unload["body"]["lora_name"] == old[1:].split("|")[0] and unload["running"] == 0
    assert server.terminate() == 0
