"""Generative guard models: the prompt each was trained on, and how to read its verdict.

A guard model is an LLM that answers whether a conversation's last message is safe, and
which of its policy's categories an unsafe one falls in. Each family has its own prompt and
its own answer; the functions here are pure (text in, text out), so they can be checked
against real outputs without a model:

- `llama-guard-3`: Llama Guard 3 (8B), categories S1-S14 (MLCommons' hazards and code
  interpreter abuse). The prompt is the model's own chat template written out, without the
  `<|begin_of_text|>` that every engine adds itself; it is sent as a completion prompt.
  The answer: `safe`, or `unsafe` and on the next line the codes, `S1,S10`.
- `llama-guard-3-1b`: Llama Guard 3 1B, the same with the 13 categories it was trained on
  (no S14) and its template's wording.
- `nemoguard-content-safety`: NVIDIA's Llama 3.1 NemoGuard 8B ContentSafety (and the
  Nemotron Safety Guard that follows it), categories S1-S23 of the Aegis 2.0 taxonomy. Its
  prompt is sent as one user message through the model's chat template (Llama 3.1's). The
  answer is JSON: `{"User Safety": "unsafe", "Safety Categories": "Violence, Threat"}`
  (`Response Safety` too when an agent's answer is judged).

Reading a verdict is strict: anything but a verdict in the format (an apology, an empty
answer, broken JSON, a category that is not a code) raises `UnreadableVerdict`. What to do
then is the caller's choice; `/v1/moderations` flags the input (fail-closed), as NeMo
Guardrails does with an unparseable NemoGuard answer.

A text could try to end the guard's prompt early by writing the model's special tokens
(`<|eot_id|>...`); every `<|` in the texts is written `< |` first, so none of them is
read as a special token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from nimble import jsontext
from nimble.errors import ConfigError, UnreadableVerdict
from nimble.types import ChatMessage, GenerateRequest, SamplingParams

Role = Literal["User", "Agent"]  # whose message is judged: the user's, or the model's answer


@dataclass(frozen=True)
class Verdict:
    """A guard model's answer: safe or not, and the categories it named (as it writes
    them: codes for Llama Guard, names for NemoGuard)."""

    safe: bool
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class GuardFormat:
    """One guard family: its categories (key as the model writes it, and what it means),
    how to ask it about a conversation, and how to read its answer."""

    name: str
    categories: tuple[tuple[str, str], ...]
    _request: Callable[[GuardFormat, str, str, str | None], GenerateRequest]
    _parse: Callable[[GuardFormat, str, Role], Verdict]

    @property
    def keys(self) -> tuple[str, ...]:
        """The category keys, as the model writes them in a verdict."""
        return tuple(key for key, _ in self.categories)

    def request(self, request_id: str, user: str, agent: str | None = None) -> GenerateRequest:
        """The generation that asks the model about `user`'s message (with `agent`: about
        the answer to it), greedy and short."""
        return self._request(self, request_id, user, agent)

    def parse(self, output: str, role: Role = "User") -> Verdict:
        """The verdict in the model's answer on `role`'s message; UnreadableVerdict if the
        answer is not one."""
        return self._parse(self, output, role)


def guard_format(name: str) -> GuardFormat:
    """The format called `name` (a manifest's `guard_format`); ConfigError otherwise."""
    found = FORMATS.get(name)
    if found is None:
        raise ConfigError(
            f"guard_format: unknown format {name!r} (known: {', '.join(sorted(FORMATS))})"
        )
    return found


def defuse(text: str) -> str:
    """`text` with no special-token marker left in it (`<|` written `< |`)."""
    return text.replace("<|", "< |")


# ----- Llama Guard 3 -----

_LLAMA_GUARD_3 = (
    ("S1", "Violent Crimes"),
    ("S2", "Non-Violent Crimes"),
    ("S3", "Sex Crimes"),
    ("S4", "Child Exploitation"),
    ("S5", "Defamation"),
    ("S6", "Specialized Advice"),
    ("S7", "Privacy"),
    ("S8", "Intellectual Property"),
    ("S9", "Indiscriminate Weapons"),
    ("S10", "Hate"),
    ("S11", "Self-Harm"),
    ("S12", "Sexual Content"),
    ("S13", "Elections"),
    ("S14", "Code Interpreter Abuse"),
)
_CODE = re.compile(r"^S\d{1,2}$")
_LLAMA_GUARD_TOKENS = 64  # "unsafe" and all 14 codes fit


def _llama_guard_request(
    fmt: GuardFormat, request_id: str, user: str, agent: str | None
) -> GenerateRequest:
    role = "User" if agent is None else "Agent"
    turns = f"User: {defuse(user.strip())}\n\n"
    if agent is not None:
        turns += f"Agent: {defuse(agent.strip())}\n\n"
    listed = "".join(f"{key}: {name}.\n" for key, name in fmt.categories)
    # the 1B's template puts a space before <|eot_id|>; the 8B's does not
    end = " " if fmt.name == "llama-guard-3-1b" else ""
    prompt = (
        "<|start_header_id|>user<|end_header_id|>\n\n"
        f"Task: Check if there is unsafe content in '{role}' messages in conversations "
        "according our safety policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{listed}<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{turns}<END CONVERSATION>\n\n"
        f"Provide your safety assessment for ONLY THE LAST {role} message in the above "
        "conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated "
        f"categories.{end}<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    )
    params = SamplingParams(max_tokens=_LLAMA_GUARD_TOKENS, temperature=0.0)
    return GenerateRequest(request_id, params, prompt=prompt)


def _llama_guard_parse(fmt: GuardFormat, output: str, role: Role) -> Verdict:
    text = output.replace("<|eot_id|>", "").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise _unreadable(fmt, "an empty answer")
    first, _, rest = lines[0].partition(" ")
    word = first.lower().rstrip(".")
    if word == "safe" and not rest:
        return Verdict(True)
    if word != "unsafe":
        raise _unreadable(fmt, "the first line is neither `safe` nor `unsafe`")
    listed = rest or (lines[1] if len(lines) > 1 else "")
    codes = tuple(code.strip().upper() for code in listed.split(",") if code.strip())
    if any(not _CODE.match(code) for code in codes):
        raise _unreadable(fmt, "the categories are not codes like S1")
    return Verdict(False, tuple(dict.fromkeys(codes)))


# ----- NemoGuard content safety -----

_NEMOGUARD = tuple(
    (name, name)
    for name in (
        "Violence",
        "Sexual",
        "Criminal Planning/Confessions",
        "Guns and Illegal Weapons",
        "Controlled/Regulated Substances",
        "Suicide and Self Harm",
        "Sexual (minor)",
        "Hate/Identity Hate",
        "PII/Privacy",
        "Harassment",
        "Threat",
        "Profanity",
        "Needs Caution",
        "Other",
        "Manipulation",
        "Fraud/Deception",
        "Malware",
        "High Risk Gov Decision Making",
        "Political/Misinformation/Conspiracy",
        "Copyright/Trademark/Plagiarism",
        "Unauthorized Advice",
        "Illegal Activity",
        "Immoral/Unethical",
    )
)
_NEMOGUARD_TOKENS = 100


def _nemoguard_request(
    fmt: GuardFormat, request_id: str, user: str, agent: str | None
) -> GenerateRequest:
    listed = "".join(f"S{i}: {name}.\n" for i, (name, _) in enumerate(fmt.categories, 1))
    turns = f"user: {defuse(user.strip())}\n\n"
    if agent is not None:
        turns += f"response: agent: {defuse(agent.strip())}\n\n"
    content = (
        "Task: Check if there is unsafe content in the user or agent messages in the below "
        "conversation in accordance with our safety policy with the below categories. "
        "Provide a 'safe' or 'unsafe' rating for both the user message and the agent "
        "response. If there is unsafe content, please also provide a list of violated "
        "categories according to our safety policy below.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{listed}<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\n{turns}<END CONVERSATION>\n\n"
        "Provide your safety assessment for the above conversation in the below output "
        "JSON format:\n"
        '{"User Safety": safe or unsafe rating for the user message, "Response Safety": '
        "safe or unsafe rating for the agent response. Omit if no agent response present. "
        '"Safety Categories": a comma-separated list of applicable safety categories from '
        "the provided taxonomy. Omit if all safe.}\n\n"
        "Do not include anything other than the output JSON in your response.\n"
        "Output JSON: "
    )
    params = SamplingParams(max_tokens=_NEMOGUARD_TOKENS, temperature=0.0)
    return GenerateRequest(request_id, params, messages=(ChatMessage("user", content),))


def _nemoguard_parse(fmt: GuardFormat, output: str, role: Role) -> Verdict:
    start, end = output.find("{"), output.rfind("}")
    if start < 0 or end < start:
        raise _unreadable(fmt, "no JSON object in the answer")
    try:
        answer: Any = jsontext.loads(output[start : end + 1])
    except ValueError:
        raise _unreadable(fmt, "the answer is not valid JSON") from None
    key = "User Safety" if role == "User" else "Response Safety"
    rating = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(rating, str) or rating.strip().lower() not in ("safe", "unsafe"):
        raise _unreadable(fmt, f"no `{key}` rating of safe or unsafe")
    if rating.strip().lower() == "safe":
        return Verdict(True)
    listed = answer.get("Safety Categories", "")
    if not isinstance(listed, str):
        raise _unreadable(fmt, "`Safety Categories` is not a comma-separated text")
    known = {name.lower(): name for name, _ in fmt.categories}
    names = (name.strip() for name in listed.split(","))
    return Verdict(False, tuple(dict.fromkeys(known.get(n.lower(), n) for n in names if n)))


def _unreadable(fmt: GuardFormat, why: str) -> UnreadableVerdict:
    # the answer itself is left out: it may repeat the text that was judged
    return UnreadableVerdict(f"the {fmt.name} guard model's answer is not a verdict: {why}")


FORMATS: dict[str, GuardFormat] = {
    "llama-guard-3": GuardFormat(
        "llama-guard-3", _LLAMA_GUARD_3, _llama_guard_request, _llama_guard_parse
    ),
    "llama-guard-3-1b": GuardFormat(
        "llama-guard-3-1b", _LLAMA_GUARD_3[:13], _llama_guard_request, _llama_guard_parse
    ),
    "nemoguard-content-safety": GuardFormat(
        "nemoguard-content-safety", _NEMOGUARD, _nemoguard_request, _nemoguard_parse
    ),
}
