"""A labelled set of synthetic texts with personal data in them, for the PII rail's recall.

Seeded and deterministic: the same seed gives the same texts. Each text is a few sentences
(the personal data in varied wording, some with a cue such as "call me at", some bare) mixed
with sentences that carry none but look a little like it (order numbers, prices, dates,
versions), and every piece of personal data is labelled with its exact span.

The values are made the way real ones are: card numbers pass the Luhn check (Visa,
Mastercard, Amex, Discover), IBANs have valid check digits and each country's length, phone
numbers follow each country's numbering plan (US area codes in use, exchanges 2xx-9xx) in
the formats people write, addresses are US-style (and a few UK) street addresses.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

KINDS = ("email", "phone", "card", "iban", "name", "address")
STRUCTURED = ("email", "phone", "card", "iban")


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


@dataclass(frozen=True)
class Span:
    kind: str
    start: int
    end: int
    value: str


@dataclass(frozen=True)
class Sample:
    text: str
    spans: tuple[Span, ...]


FIRST = _words(
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara "
    "Richard Susan Joseph Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa Anthony "
    "Betty Mark Margaret Steven Sandra Andrew Ashley Kevin Emily Brian Donna George Michelle "
    "Olivia Ethan Sophia Liam Chloe Noah Grace Lucas Hannah Oliver"
)
LAST = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Thompson White Harris Clark Lewis "
    "Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Adams Baker Nelson "
    "Carter Mitchell Roberts Turner Phillips Campbell Parker Evans Edwards Collins Stewart"
)
DOMAINS = _words(
    "example.com gmail.com outlook.com acme-corp.io mail.co.uk uni-heidelberg.de "
    "orange.fr company.org startup.ai health.gov"
)
STREETS = _words(
    "Oak Maple Main Cedar Elm Washington Lake Hill Park Pine Sunset Highland Jefferson "
    "Lincoln Madison Franklin Church Spring Ridge Willow Mill River Walnut Chestnut Cherry"
)
SUFFIXES = _words("Street St. Avenue Ave Road Rd Boulevard Blvd Lane Drive Court Place Way")
CITIES = (
    ("Springfield", "IL"),
    ("Riverside", "CA"),
    ("Portland", "OR"),
    ("Austin", "TX"),
    ("Denver", "CO"),
    ("Boston", "MA"),
    ("Columbus", "OH"),
    ("Madison", "WI"),
    ("Salem", "OR"),
    ("Fairview", "TN"),
)
US_AREA = (212, 415, 312, 617, 206, 303, 404, 512, 702, 213, 646, 718, 305, 602, 503, 919)

FILLER = (
    "Order #48213 shipped on 2024-03-12.",
    "The invoice total is $1,240.50 including tax.",
    "Version 3.11.7 fixed the memory leak.",
    "The meeting moved to 10:30 in room 204.",
    "We had 1,523 visitors in March and 1,877 in April.",
    "Ticket 20931 is still open.",
    "Please review the attached draft before the deadline.",
    "The quarterly numbers look better than last year.",
    "Reference code: QX-7731-B.",
    "Our office is closed on public holidays.",
    "The build took 42 minutes on the old runner.",
    "Batch 7 of 12 completed without errors.",
    "Thanks again for your help with the migration.",
    "The contract runs for 24 months from signature.",
    "Temperature in the server room was 21.5 degrees.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "email": (
        "Please email {} with the results.",
        "Contact: {}",
        "You can write to {} if anything changes.",
        "Send the signed copy to {} by Monday.",
        "My address for invoices is {}.",
        "cc {} on the thread",
    ),
    "phone": (
        "You can reach me at {} after 5pm.",
        "Call {} to confirm the booking.",
        "My mobile is {}.",
        "Phone: {}",
        "If the line drops, dial {} again.",
        "The front desk number is {}, ask for extension 12.",
    ),
    "card": (
        "My card number is {}, expiring 09/27.",
        "Please charge {} for the renewal.",
        "Card: {}",
        "I paid with {} yesterday.",
        "Use the Visa ending in the digits of {} for this order.",
        "Refund the amount to {}.",
    ),
    "iban": (
        "Wire the deposit to {} by Friday.",
        "IBAN: {}",
        "Our bank account is {}.",
        "Please transfer the fee to {} with the invoice number as reference.",
        "Salary goes to {} from next month.",
        "Use {} for the refund.",
    ),
    "name": (
        "{} will join the call tomorrow.",
        "I spoke with {} about the renewal.",
        "Please forward this to {} before noon.",
        "The report was written by {}.",
        "Dear {}, thank you for your message.",
        "Ask {} for the keys.",
        "Yesterday {} approved the budget.",
        "Our new manager is {}.",
    ),
    "address": (
        "Ship the package to {}.",
        "I live at {}.",
        "The office moved to {} last year.",
        "Address: {}",
        "Please send the documents to {} and mark them urgent.",
        "The event takes place at {}.",
    ),
}


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # doubled: the check digit will sit to the right of these
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def luhn_ok(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card(rng: random.Random) -> str:
    brand = rng.choice(("visa", "mastercard", "amex", "discover"))
    if brand == "amex":
        number = _luhn_complete(rng.choice(("34", "37")), 15, rng)
        groups: tuple[str, ...] = (number[:4], number[4:10], number[10:])
    else:
        prefix = {"visa": "4", "mastercard": str(rng.randint(51, 55)), "discover": "6011"}[brand]
        number = _luhn_complete(prefix, 16, rng)
        groups = (number[:4], number[4:8], number[8:12], number[12:])
    sep = rng.choice((" ", "-", ""))
    return sep.join(groups)


# country: (length, BBAN layout: n digit, a upper-case letter, c alphanumeric)
IBAN_LAYOUT = {
    "DE": "18n",
    "GB": "4a14n",
    "FR": "10n11c2n",
    "NL": "4a10n",
    "ES": "20n",
    "IT": "1a10n12c",
    "CH": "5n12c",
    "BE": "12n",
    "AT": "16n",
    "PL": "24n",
}


def _bban(layout: str, rng: random.Random) -> str:
    out = []
    count = ""
    for ch in layout:
        if ch.isdigit():
            count += ch
            continue
        pool = {
            "n": string.digits,
            "a": string.ascii_uppercase,
            "c": string.digits + string.ascii_uppercase,
        }[ch]
        out += [rng.choice(pool) for _ in range(int(count))]
        count = ""
    return "".join(out)


def iban_check_ok(iban: str) -> bool:
    compact = iban.replace(" ", "")
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def iban(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_LAYOUT))
    bban = _bban(IBAN_LAYOUT[country], rng)
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    compact = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def _digits(n: int, rng: random.Random) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def phone(rng: random.Random) -> str:
    a, e, s = rng.choice(US_AREA), rng.randint(200, 999), _digits(4, rng)
    if e % 100 == 11 or e == 555:
        e += 1
    london = f"7{_digits(3, rng)} {_digits(4, rng)}"
    paris = " ".join(_digits(2, rng) for _ in range(4))
    formats = (
        f"({a}) {e}-{s}",
        f"{a}-{e}-{s}",
        f"{a}.{e}.{s}",
        f"{a} {e} {s}",
        f"+1 {a} {e} {s}",
        f"+1-{a}-{e}-{s}",
        f"+1 ({a}) {e}-{s}",
        f"+44 20 {london}",
        f"+44 (0)20 {london}",
        f"020 {london}",
        f"07{rng.randint(400, 999)} {_digits(6, rng)}",
        f"+49 30 {_digits(8, rng)}",
        f"030 {_digits(7, rng)}",
        f"+33 1 {paris}",
        f"01 {paris}",
        f"+91 9{_digits(4, rng)} {_digits(5, rng)}",
    )
    return rng.choice(formats)


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST).lower(), rng.choice(LAST).lower()
    number = rng.randint(1, 99)
    forms = (
        f"{first}.{last}",
        f"{first[0]}{last}",
        f"{first}_{last}{number}",
        first,
        f"{last}.{first[0]}",
    )
    local = rng.choice(forms)
    return f"{local}@{rng.choice(DOMAINS)}"


def name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def address(rng: random.Random) -> str:
    if rng.random() < 0.1:  # a UK one
        return (
            f"{rng.randint(1, 300)} {rng.choice(STREETS)} Road, London SW{rng.randint(1, 20)} 4AB"
        )
    street = rng.choice(STREETS) if rng.random() < 0.85 else _ordinal(rng.randint(1, 99))
    line = f"{rng.randint(1, 9999)} {street} {rng.choice(SUFFIXES)}"
    if rng.random() < 0.2:
        line += f", Apt {rng.randint(1, 40)}{rng.choice('ABCD')}"
    if rng.random() < 0.6:
        city, state = rng.choice(CITIES)
        line += f", {city}, {state} {_digits(5, rng)}"
    return line


MAKERS: dict[str, Callable[[random.Random], str]] = {
    "email": email,
    "phone": phone,
    "card": card,
    "iban": iban,
    "name": name,
    "address": address,
}


def sample(rng: random.Random, kinds: list[str]) -> Sample:
    sentences: list[tuple[str, str | None, str | None]] = []  # (template, kind, value)
    for kind in kinds:
        sentences.append((rng.choice(TEMPLATES[kind]), kind, MAKERS[kind](rng)))
    for _ in range(rng.randint(0, 3)):
        sentences.append((rng.choice(FILLER), None, None))
    rng.shuffle(sentences)
    text = ""
    spans: list[Span] = []
    for template, kind_or_none, value in sentences:
        if text:
            text += " "
        if kind_or_none is None or value is None:
            text += template
            continue
        before, after = template.split("{}")
        start = len(text) + len(before)
        spans.append(Span(kind_or_none, start, start + len(value), value))
        text += before + value + after
    return Sample(text, tuple(spans))


def corpus(n: int = 240, seed: int = 20) -> list[Sample]:
    """`n` texts; each holds one kind in turn (so every kind appears n/6 times at least)
    and, in half of them, one or two more of any kind."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kinds = [KINDS[i % len(KINDS)]]
        if rng.random() < 0.5:
            kinds += rng.sample(KINDS, rng.randint(1, 2))
        out.append(sample(rng, kinds))
    return out
