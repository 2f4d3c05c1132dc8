"""Frozen value types shared by the runtime and the engines (no behaviour, no imports of layers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class Task(StrEnum):
    """What a model can be asked to do."""

    CHAT = "chat"
    COMPLETION = "completion"
    EMBEDDING = "embedding"
    RERANK = "rerank"
    CLASSIFY = "classify"  # sequence classification: a text to scores over the model's labels


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: `arguments` is the JSON text of the arguments object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolFunction:
    """A function the client declared in `tools`; `parameters` is its JSON schema."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    strict: bool = False


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns that called tools
    tool_call_id: str | None = None  # tool turns: the call this result answers


@dataclass(frozen=True)
class JsonSchemaConstraint:
    """The output is one JSON value valid against `schema`."""

    schema: dict[str, Any]


@dataclass(frozen=True)
class RegexConstraint:
    """The whole output matches `pattern`."""

    pattern: str


@dataclass(frozen=True)
class ChoiceConstraint:
    """The output is exactly one of `choices`."""

    choices: tuple[str, ...]


@dataclass(frozen=True)
class GrammarConstraint:
    """The output follows `grammar`, in the engine's own grammar language (GBNF for
    llama.cpp, what vLLM's structured-output backend takes for vLLM)."""

    grammar: str


@dataclass(frozen=True)
class ToolCallConstraint:
    """The output is one or more tool calls in the model's markup: each call is `begin`,
    a JSON object valid against `call_schema`, then `end`; calls are joined by
    `separator`. `max_calls` None means any number (at least one). `lazy`: the model may
    write plain text instead; the grammar binds from the moment it writes `begin`
    (tool_choice auto)."""

    call_schema: dict[str, Any]
    begin: str = ""
    end: str = ""
    separator: str = ""
    max_calls: int | None = None
    lazy: bool = False


Constraint = (
    JsonSchemaConstraint
    | RegexConstraint
    | ChoiceConstraint
    | GrammarConstraint
    | ToolCallConstraint
)

# "none" | "auto" | "required" | the name of one declared function
ToolChoice = str


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings, already validated at the API edge."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # number of alternatives per token; None means no logprobs at all
    top_logprobs: int | None = None
    # vLLM's extensions (docs/sampling.md: which engine honours which). None: the engine's
    # own default. top_k 0 is off (the API's -1 and 0); repetition_penalty > 1 discourages
    # tokens already in the prompt or the output (1: none)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    # no end (end of text, stop_token_ids, stop strings) before this many tokens
    min_tokens: int = 0
    # the output ends after one of these tokens (its text is left out, unless
    # include_stop_str_in_output)
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # the end-of-text tokens are never picked: run to max_tokens
    include_stop_str_in_output: bool = False  # keep the stop string (or token) in the text
    skip_special_tokens: bool = True
    # OpenAI's logit_bias: (token id, bias) pairs added to the logits before sampling
    logit_bias: tuple[tuple[int, float], ...] = ()
    # stream_options.continuous_usage_stats: each text chunk carries `progress`
    continuous_usage: bool = False


@dataclass(frozen=True)
class GenerateRequest:
    """One chat or completion request, as an engine receives it.

    Exactly one of `messages` (chat) or `prompt` (completion) is set. A completion prompt is
    a text, or the model's token ids, taken as they are (no BOS added; the runtime has
    checked them against the vocabulary through `Generator.prompt_tokens`).

    `echo` (completions): each choice starts with the prompt, its text and, with
    `params.top_logprobs`, the logprob of each prompt token (the first has none: nothing
    comes before it); `params.max_tokens` 0 then scores the prompt and generates nothing.
    """

    request_id: str
    params: SamplingParams
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | tuple[int, ...] | None = None
    echo: bool = False
    # declared functions, for the model's chat template to render (empty: no tools)
    tools: tuple[ToolFunction, ...] = ()
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True
    # grammar-constrained decoding: the engine must only produce text that satisfies it
    constraint: Constraint | None = None
    # the LoRA adapter to apply (its name, as loaded into the engine); None: the base model
    adapter: str | None = None

    @property
    def task(self) -> Task:
        return Task.CHAT if self.messages is not None else Task.COMPLETION


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float | None  # None: the first token of an echoed prompt only
    bytes: tuple[int, ...] | None = None
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    # of the completion tokens, those in the model's thinking; None: no reasoning parser ran
    reasoning_tokens: int | None = None
    # of the prompt tokens, those the engine read from its prefix cache; None: not reported
    cached_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call of a choice, as it streams: the first piece of call
    `index` carries its `id` and `name`, later ones more `arguments` text (JSON)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


# content_filter: an output guardrail stopped the choice (docs/guardrails.md)
FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True)
class GenerationChunk:
    """A piece of output for one choice. The last chunk of a choice has `finish_reason`.

    The engine ends its stream with one chunk that carries `usage` (and no text). Engines
    produce text only; the runtime turns tool-call markup into `tool_calls` and thinking
    (`<think>...</think>`) into `reasoning`.
    """

    index: int = 0
    text: str = ""
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    usage: Usage | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    # with `params.continuous_usage`: this choice's prompt tokens and its completion tokens
    # so far (None: the engine did not count at this chunk)
    progress: Usage | None = None
    # the model's thinking (a reasoning parser moved it out of `text`)
    reasoning: str = ""
    # with finish_reason "stop": the stop string (`params.stop`) that ended the choice; None
    # for the end of the turn (an end-of-text or stop token) or an engine that cannot tell
    stop_sequence: str | None = None


@dataclass(frozen=True)
class EmbeddingTraits:
    """How an embedding model wants its inputs (see the model manifest)."""

    query_prefix: str = ""
    passage_prefix: str = ""
    input_type_required: bool = False
    dimensions: int | None = None
    matryoshka_dimensions: tuple[int, ...] = ()


@dataclass(frozen=True)
class EmbedRequest:
    """Texts (prefixes already applied) or token id arrays, as the engine receives them.

    `truncate`: END cuts the end of an input longer than the model's window, START its
    beginning, NONE refuses it (InvalidRequest with both lengths)."""

    request_id: str
    inputs: tuple[str | tuple[int, ...], ...]
    truncate: Literal["NONE", "START", "END"] = "END"


@dataclass(frozen=True)
class EmbedResult:
    vectors: tuple[tuple[float, ...], ...]
    prompt_tokens: int


@dataclass(frozen=True)
class RankRequest:
    """A query and the documents to score against it (a cross-encoder reads each pair).

    `truncate`: END cuts a pair longer than the model's window, NONE refuses it."""

    request_id: str
    query: str
    documents: tuple[str, ...]
    truncate: Literal["NONE", "END"] = "END"


@dataclass(frozen=True)
class RankResult:
    """One raw score (a logit for a cross-encoder) per document, in the request's order."""

    scores: tuple[float, ...]
    prompt_tokens: int


@dataclass(frozen=True)
class ClassifierTraits:
    """How a sequence classifier's labels read (see the model manifest): `labels` renames
    the classes (index order) where the model's config only says LABEL_0, LABEL_1...;
    `safe_labels` never flag in moderation; a label flags at `threshold` or above."""

    labels: tuple[str, ...] = ()
    safe_labels: tuple[str, ...] = ()
    threshold: float = 0.5


@dataclass(frozen=True)
class ClassifyRequest:
    """Texts to classify, as the engine receives them. `truncate`: None refuses an input
    longer than the model's window (InvalidRequest naming `input` with both lengths); a
    number cuts each input to that many tokens (special tokens included; at most the
    window)."""

    request_id: str
    inputs: tuple[str, ...]
    truncate: int | None = None


@dataclass(frozen=True)
class Classification:
    """One input's scores: every label of the model, in its id2label order, with its
    probability (softmax over the labels; a sigmoid each for a multi-label model)."""

    labels: tuple[str, ...]
    probs: tuple[float, ...]

    @property
    def label(self) -> str:
        """The most probable label."""
        return self.labels[max(range(len(self.probs)), key=self.probs.__getitem__)]

    def score(self, label: str) -> float:
        return self.probs[self.labels.index(label)]


@dataclass(frozen=True)
class ClassifyResult:
    """One classification per input, in the request's order."""

    classifications: tuple[Classification, ...]
    prompt_tokens: int
    multi_label: bool = False


@dataclass(frozen=True)
class Moderation:
    """The verdict on one input: `categories` says which categories the input falls in,
    `category_scores` how strongly (a probability from a classifier; 1.0 or 0.0 from a
    guard model, which answers a verdict, not a score); flagged when any category is."""

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]


@dataclass(frozen=True)
class TokenizeRequest:
    """Text to turn into the model's token ids (`prompt`), or a conversation (`chat`: its
    messages and tools, as a chat completion carries them) that the engine renders with the
    model's chat template first, exactly as for a chat completion. Exactly one is set.

    `add_special_tokens`: the tokenizer's own special tokens (BOS...), on top of what a
    chat template writes. `add_generation_prompt` opens the assistant's turn after the
    conversation; `continue_final_message` leaves the last message open instead."""

    prompt: str | None = None
    chat: GenerateRequest | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False


@dataclass(frozen=True)
class Tokens:
    """Token ids, and the text of each as the engine's tokenizer shows it."""

    ids: tuple[int, ...]
    pieces: tuple[str, ...]


@dataclass(frozen=True)
class ModelFile:
    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class EngineInfo:
    """What an engine tells `/v1/metadata` about itself and the model it runs."""

    engine: str
    engine_version: str
    tasks: frozenset[Task]
    context_length: int
    supports_logprobs: bool
    files: tuple[ModelFile, ...] = ()
    # the chat template shows `tools` and calls/results itself (else nimble writes them in)
    renders_tools: bool = False
    extra: dict[str, str] = field(default_factory=dict)
