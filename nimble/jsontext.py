"""Reading JSON that a client or a model wrote.

Python's `json` raises RecursionError, not ValueError, for arrays and objects nested past the
interpreter's recursion limit (about 1,000 levels; `"[" * 5000` is 5 kB). Read here, that is
one more kind of JSON nimble cannot take: a ValueError, which every reader already answers
(a 400 for a client's JSON, "not a call" for a model's).
"""

from __future__ import annotations

import json
from typing import Any

TOO_DEEP = "its arrays and objects nest too deeply"


def loads(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError(TOO_DEEP) from None
