"""`nimble audit verify` and `nimble keys create | hash`: exit codes, messages, and keys that
authenticate against the file they were appended to."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from nimble.cli.main import app
from nimble.config.settings import ALL_ENDPOINTS
from nimble.errors import Unauthenticated
from nimble.observability.record import RequestRecord
from nimble.security.audit import AuditLog
from nimble.security.keys import KEY_PREFIX, KeyEntry, KeyStore, hash_key


def invoke(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, list(args), input=input, env={"COLUMNS": "200"})


@pytest.fixture
def audit_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for n in range(5):
        log.write(RequestRecord(request_id=f"r{n}", path="/v1/models", status=200), 0.001)
    log.close()
    return path


# --- audit verify ---


def test_verify_ok_prints_the_count_and_last_hash(audit_file: Path) -> None:
    result = invoke("audit", "verify", str(audit_file))
    assert result.exit_code == 0, result.output
    last = audit_file.read_bytes().splitlines()[-1]
    assert result.output.strip() == (f"ok: 5 lines, last sha256 {hashlib.sha256(last).hexdigest()}")


def test_verify_a_broken_chain_names_the_line(audit_file: Path) -> None:
    lines = audit_file.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"r1"', b'"r9"')
    audit_file.write_bytes(b"".join(lines))
    result = invoke("audit", "verify", str(audit_file))
    assert result.exit_code == 1
    out = result.output.splitlines()
    assert out[0] == (
        f"{audit_file}: line 3: prev is not the sha256 of line 2: line 2 was edited, or "
        "lines were removed or moved before line 3"
    )
    assert out[-1] == "FAILED: 1 problem in 5 lines"


def test_verify_with_an_anchor_and_a_start(audit_file: Path) -> None:
    lines = audit_file.read_bytes().splitlines(keepends=True)
    noted = hashlib.sha256(lines[-1].rstrip(b"\n")).hexdigest()
    assert invoke("audit", "verify", str(audit_file), "--anchor", noted).exit_code == 0
    audit_file.write_bytes(b"".join(lines[:-1]))
    result = invoke("audit", "verify", str(audit_file), "--anchor", noted)
    assert result.exit_code == 1
    assert "no line has the anchor sha256" in result.output

    audit_file.write_bytes(b"".join(lines[2:]))
    assert invoke("audit", "verify", str(audit_file)).exit_code == 1
    start = hashlib.sha256(lines[1].rstrip(b"\n")).hexdigest()
    assert invoke("audit", "verify", str(audit_file), "--prev", start).exit_code == 0
    bad = invoke("audit", "verify", str(audit_file), "--prev", "xyz")
    assert bad.exit_code == 2 and "64 hex digits" in bad.output


def test_verify_a_missing_file_exits_2(tmp_path: Path) -> None:
    result = invoke("audit", "verify", str(tmp_path / "nope.jsonl"))
    assert result.exit_code == 2
    assert "No such file" in result.output


def test_verify_shows_the_first_problems_and_counts_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "junk.jsonl"
    path.write_text("x\n" * 25)
    result = invoke("audit", "verify", str(path), "--max-problems", "3")
    assert result.exit_code == 1
    out = result.output.splitlines()
    assert len(out) == 4 and out[0].endswith("line 1: not JSON: an incomplete or foreign line")
    assert out[-1] == "FAILED: 25 problems in 25 lines (22 not shown)"


# --- keys create ---


def printed_key(output: str) -> str:
    keys = [line for line in output.splitlines() if line.startswith(KEY_PREFIX)]
    assert len(keys) == 1, output
    return keys[0]


def test_create_prints_a_key_and_its_entry() -> None:
    result = invoke(
        "keys",
        "create",
        "--id",
        "analytics",
        "--model",
        "fake-model",
        "--endpoint",
        "chat",
        "--endpoint",
        "embeddings",
        "--no-tools",
        "--rpm",
        "60",
        "--tpm",
        "20000",
        "--concurrent",
        "2",
    )
    assert result.exit_code == 0, result.output
    key = printed_key(result.output)
    entry_text = result.output.split("Key file entry (under `keys:`):\n", 1)[1]
    entries = yaml.safe_load(entry_text)
    assert entries == [
        {
            "id": "analytics",
            "sha256": hash_key(key),
            "models": ["fake-model"],
            "endpoints": ["chat", "embeddings"],
            "tools": False,
            "limits": {
                "requests_per_minute": 60,
                "tokens_per_minute": 20000,
                "concurrent_requests": 2,
            },
        }
    ]
    KeyEntry.model_validate(entries[0])
    assert key not in entry_text  # only the hash goes to the file


def test_create_writes_the_purpose_tool_scope_and_rails(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    result = invoke(
        "keys",
        "create",
        "--id",
        "claims",
        "--purpose",
        "claims-triage agent",
        "--declare-tool",
        "lookup_claim",
        "--declare-tool",
        "send_email",
        "--call-tool",
        "lookup_claim",
        "--rail",
        "pii",
        "--append",
        str(path),
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert path.read_text().splitlines()[3:] == [
        "    purpose: claims-triage agent",
        "    tools: {declare: [lookup_claim, send_email], call: [lookup_claim]}",
        "    rails: [pii]",
    ]
    (key,) = KeyStore(path, ALL_ENDPOINTS).keys
    assert key.purpose == "claims-triage agent" and key.rails == ("pii",)
    assert key.tools.declare == {"lookup_claim", "send_email"}
    assert key.tools.call == {"lookup_claim"}
    called_only = invoke("keys", "create", "--id", "c", "--call-tool", "f")
    entry = yaml.safe_load(called_only.output.split("(under `keys:`):\n", 1)[1])
    assert entry[0]["tools"] == {"call": ["f"]}


def test_create_makes_a_different_key_each_time() -> None:
    first = printed_key(invoke("keys", "create", "--id", "a").output)
    second = printed_key(invoke("keys", "create", "--id", "a").output)
    assert first != second and len(first) > 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id", "bad id!"], "id: String should match pattern"),
        (["--id", "a", "--endpoint", "chat", "--endpoint", "nope"], "unknown nope"),
        (["--id", "a", "--rpm", "0"], "--rpm"),
        (["--id", "a", "--quiet"], "needs --append"),
        (["--id", "a", "--no-tools", "--call-tool", "f"], "--no-tools leaves no tool"),
        (
            ["--id", "a", "--declare-tool", "f", "--call-tool", "g"],
            "tools: Value error, call names g, which declare does not list",
        ),
        (["--id", "a", "--purpose", "two\nlines"], "purpose: String should match"),
        (["--id", "a", "--rail", "no spaces"], "rails.0: String should match"),
        ([], "--id"),
    ],
)
def test_create_refuses_bad_options(args: list[str], message: str) -> None:
    result = invoke("keys", "create", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_appended_keys_authenticate_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    first = invoke("keys", "create", "--id", "one", "--append", str(path))
    assert first.exit_code == 0, first.output
    assert f"Appended its entry to {path} (1 key in all)." in first.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("keys:\n  - id: one\n")
    second = invoke(
        "keys", "create", "--id", "two", "--endpoint", "chat", "--append", str(path), "-q"
    )
    assert second.exit_code == 0, second.output
    key_two = second.output.strip()
    assert key_two.startswith(KEY_PREFIX) and "\n" not in key_two

    store = KeyStore(path, ALL_ENDPOINTS)
    assert [k.id for k in store.keys] == ["one", "two"]
    assert store.authenticate(printed_key(first.output)).id == "one"
    found = store.authenticate(key_two)
    assert found.id == "two" and found.endpoints == frozenset({"chat"})
    with pytest.raises(Unauthenticated):
        store.authenticate(KEY_PREFIX + "not-a-key")


def test_append_keeps_comments_and_mode_and_refuses_a_duplicate_id(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    original = f"# team keys\nkeys:\n- id: old  # the first one\n  sha256: {'a' * 64}\n"
    path.write_text(original)
    path.chmod(0o640)
    result = invoke("keys", "create", "--id", "new", "--append", str(path))
    assert result.exit_code == 0, result.output
    text = path.read_text()
    assert text.startswith(original) and "\n- id: new\n" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o640

    again = invoke("keys", "create", "--id", "new", "--append", str(path))
    assert again.exit_code == 1
    assert "key ids must be unique" in again.output and str(path) in again.output
    assert path.read_text() == text  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.yaml"]  # no temp file left


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("keys: []\n", "paste the entry by hand"),
        ("other: 1\n", "no top-level `keys:`"),
        ("keys: [\n", "not valid YAML"),
    ],
)
def test_append_refuses_files_it_cannot_extend(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(content)
    result = invoke("keys", "create", "--id", "k", "--append", str(path))
    assert result.exit_code == 1
    assert message in result.output
    assert path.read_text() == content


def test_append_to_a_file_of_comments_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("# nothing yet")
    result = invoke("keys", "create", "--id", "k", "--append", str(path))
    assert result.exit_code == 0, result.output
    assert path.read_text().startswith("# nothing yet\nkeys:\n  - id: k\n")
    assert len(KeyStore(path, ALL_ENDPOINTS).keys) == 1


# --- keys hash ---


def test_hash_reads_a_key_from_stdin() -> None:
    key = "my-own-key-0123456789abcdef0123456789"
    result = invoke("keys", "hash", input=key + "\n")
    assert result.exit_code == 0
    assert result.output.strip() == hashlib.sha256(key.encode()).hexdigest()


def test_hash_warns_about_short_keys_and_refuses_empty_input() -> None:
    short = invoke("keys", "hash", input="short")
    assert short.exit_code == 0
    assert "warning" in short.output
    assert short.output.splitlines()[-1] == hash_key("short")
    for bad in ("", "   \n", "two keys\n"):
        result = invoke("keys", "hash", input=bad)
        assert result.exit_code == 2
        assert "expected one key" in result.output


def test_list_prints_ids_refs_and_purposes_never_a_hash(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    digest = hash_key("nb-claims")
    entries = [
        {"id": "claims-agent", "sha256": digest, "purpose": "claims triage"},
        {"id": "p", "sha256": hash_key("nb-p")},
    ]
    path.write_text(yaml.safe_dump({"keys": entries}))
    result = invoke("keys", "list", str(path))
    assert result.exit_code == 0, result.output
    claims, other = KeyStore(path, ALL_ENDPOINTS).keys
    assert result.output.splitlines() == [
        "ID            REF               PURPOSE",
        f"claims-agent  {claims.ref}  claims triage",
        f"p             {other.ref}  -",
    ]
    assert digest not in result.output
    path.write_text("keys: [")
    broken = invoke("keys", "list", str(path))
    assert broken.exit_code == 2 and "not valid YAML" in broken.output
