"""Classification results as the runtime hands them out, and moderation on top of them.

A model can moderate when it is a sequence classifier (task `classify`) or a generative
guard model (its manifest's `guard_format`):

- A classifier flags an input when a label other than its safe ones reaches the
  threshold (manifest `classifier`: by default class 0 is the safe label of a single-label
  model, none is of a multi-label one, and the threshold is 0.5). The categories are its
  other labels, with their probabilities as scores.
- A guard model is asked with its own prompt (`guardrails/guard_formats.py`), one
  generation per input, and its verdict read: the categories are those of its policy (the
  keys it writes: S1... for Llama Guard), 1.0 for those it named and 0.0 for the others. An
  answer that is not a verdict flags the input with no category (fail-closed) and is logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence

from nimble.errors import (
    ContextLengthExceeded,
    InvalidRequest,
    ModelLoadError,
    UnreadableVerdict,
)
from nimble.guardrails.guard_formats import GuardFormat, guard_format
from nimble.runtime.served import ServedModel
from nimble.types import (
    Classification,
    ClassifierTraits,
    ClassifyRequest,
    ClassifyResult,
    GenerateRequest,
    Moderation,
    Task,
)

log = logging.getLogger("nimble.runtime")

Answer = Callable[[str, GenerateRequest], Awaitable[str]]  # model id, request -> its text


def moderators(models: dict[str, ServedModel]) -> dict[str, ServedModel]:
    """The served models that can moderate, by the name to ask for: a classifier's id, a
    guard model's (or the adapter it is served as: a manifest's `lora`, NemoGuard)."""
    found: dict[str, ServedModel] = {}
    for model in models.values():
        if Task.CLASSIFY in model.spec.tasks:
            found[model.spec.id] = model
        elif "guard_format" in model.spec.options:
            found[model.spec.options.get("served_as_adapter", model.spec.id)] = model
    return found


def guard_of(model: ServedModel) -> GuardFormat | None:
    name = model.spec.options.get("guard_format")
    return guard_format(name) if name is not None else None


def only(able: list[str], doing: str, serve: str) -> str:
    """The one model in `able` (400 naming the choices when there are none or several)."""
    if len(able) == 1:
        return able[0]
    if not able:
        raise InvalidRequest(f"model: no model served here can {doing} ({serve})", param="model")
    raise InvalidRequest(
        f"model: several models can {doing} ({', '.join(able)}); say which", param="model"
    )


def classifier_model(models: dict[str, ServedModel], model_id: str | None) -> str:
    """`model_id`, or with None the one served classifier."""
    if model_id is not None:
        return model_id
    able = [m.spec.id for m in models.values() if Task.CLASSIFY in m.spec.tasks]
    return only(able, "classify", "serve a sequence classifier")


def moderation_model(models: dict[str, ServedModel], model_id: str | None) -> str:
    """The model to moderate with: `model_id`, or with None the one served model that can
    moderate (400 naming the choices when there are none or several)."""
    able = list(moderators(models))
    if model_id is None:
        serve = "serve a classifier, or a guard model whose manifest names its guard_format"
        return only(able, "moderate", serve)
    if model_id in models and model_id not in able:
        raise InvalidRequest(
            f"model `{model_id}` cannot moderate: it is neither a classifier nor a guard model"
            + (f" (models that can: {', '.join(able)})" if able else ""),
            param="model",
        )
    return model_id


def check_labels(model: ServedModel) -> None:
    """At load: a manifest's label names must be as many as the model's labels."""
    traits = model.spec.classifier
    if Task.CLASSIFY not in model.spec.tasks or traits is None or not traits.labels:
        return
    count = int(model.info.extra.get("num_labels", "0") or 0)
    if count != len(traits.labels):
        raise ModelLoadError(
            f"{model.spec.weights}: model {model.spec.id!r} has {count} labels, its manifest "
            f"names {len(traits.labels)} ({', '.join(traits.labels)})"
        )


def truncated(model: ServedModel, request: ClassifyRequest) -> ClassifyRequest:
    """`truncate` -1 (vLLM's `truncate_prompt_tokens`): the model's window."""
    window = model.info.context_length
    if request.truncate is None or 0 < request.truncate <= window:
        return request
    return dataclasses.replace(request, truncate=window)


def named(model: ServedModel, result: ClassifyResult) -> ClassifyResult:
    """The result with the manifest's label names, where it gives some."""
    traits = model.spec.classifier
    if traits is None or not traits.labels:
        return result
    return dataclasses.replace(
        result,
        classifications=tuple(
            Classification(traits.labels, c.probs) for c in result.classifications
        ),
    )


def by_classifier(traits: ClassifierTraits | None, result: ClassifyResult) -> list[Moderation]:
    """A classifier's verdicts, with the manifest's safe labels and threshold (`traits`)."""
    traits = traits or ClassifierTraits()
    return [_flagged(c, traits, result.multi_label) for c in result.classifications]


def _flagged(found: Classification, traits: ClassifierTraits, multi_label: bool) -> Moderation:
    safe = set(traits.safe_labels or (() if multi_label else found.labels[:1]))
    scores = {
        label: prob
        for label, prob in zip(found.labels, found.probs, strict=True)
        if label not in safe
    }
    categories = {label: score >= traits.threshold for label, score in scores.items()}
    return Moderation(any(categories.values()), categories, scores)


async def by_guard(
    model: ServedModel,
    served_as: str,
    fmt: GuardFormat,
    request_id: str,
    inputs: Sequence[str],
    answer: Answer,
) -> list[Moderation]:
    """One generation per input, as many at once as the model runs."""
    room = asyncio.Semaphore(max(1, model.admission.max_running))

    async def one(i: int, text: str) -> Moderation:
        async with room:
            try:
                said = await answer(served_as, fmt.request(f"{request_id}-{i}", text))
            except ContextLengthExceeded as exc:
                raise InvalidRequest(
                    f"input {i} is too long for guard model `{served_as}` with its prompt: "
                    f"{exc.message}",
                    param="input",
                ) from None
        try:
            verdict = fmt.parse(said)
        except UnreadableVerdict as exc:
            log.warning("input %d flagged (fail-closed): %s", i, exc.message)
            return Moderation(True, dict.fromkeys(fmt.keys, False), dict.fromkeys(fmt.keys, 0.0))
        named = (*fmt.keys, *(key for key in verdict.categories if key not in fmt.keys))
        categories = {key: key in verdict.categories for key in named}
        scores = {key: 1.0 if hit else 0.0 for key, hit in categories.items()}
        return Moderation(not verdict.safe, categories, scores)

    tasks = [asyncio.ensure_future(one(i, text)) for i, text in enumerate(inputs)]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:  # one refused or failed: the others stop too
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
