"""An analysis of one site that fails on an unfamiliar graph keeps that site, with the reason.

A user's graph can hold what the analysis never met (an fx node where a number was expected,
an op with odd arguments). :func:`attempt` runs one site's analysis; an error of the kinds
such code raises (:data:`ANALYSIS_ERRORS`, not ``MemoryError`` or ``KeyboardInterrupt``)
becomes the site's fallback — a kept site, an unguarded head, an untied head — and a report
note. It is for njetify's own analysis only: the user's mistakes are checked up front and
raise, the user's model failing on its inputs raises.

A bug in njetify must not hide behind a kept site in the test suite: with the environment
variable ``NJETIFY_STRICT=1`` (set by ``tests/conftest.py``) :func:`attempt` re-raises.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

T = TypeVar("T")

#: What analysis code raises on values it did not expect (the fallback keeps the site).
ANALYSIS_ERRORS = (TypeError, ValueError, AttributeError, IndexError, KeyError, LookupError,
                   NotImplementedError, RuntimeError, ArithmeticError, AssertionError)


def strict() -> bool:
    """True when ``NJETIFY_STRICT`` is set to anything but ``""`` / ``"0"``: analysis errors raise."""
    return os.environ.get("NJETIFY_STRICT", "") not in ("", "0")


def attempt(what: str, fn: Callable[[], T], fallback: Callable[[str], T], failures: list[str] | None = None) -> T:
    """``fn()``; on an analysis error ``fallback(reason)`` (reason: ``"<what> failed (Type: msg)"``),
    also appended to ``failures``. Re-raises under :func:`strict`."""
    try:
        return fn()
    except ANALYSIS_ERRORS as e:
        if strict():
            raise
        text = str(e).splitlines()[0][:160] if str(e) else ""
        reason = f"{what} failed ({type(e).__name__}: {text})" if text else f"{what} failed ({type(e).__name__})"
        if failures is not None:
            failures.append(reason)
        return fallback(reason)


def failure_note(failures: list[str]) -> str | None:
    """One report note for the analyses that failed (None when none did)."""
    if not failures:
        return None
    head = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
    return (f"the analysis of {len(failures)} site(s) failed unexpectedly; they were left as they were: {head}. "
            "This is a bug in njetify: please report it (NJETIFY_STRICT=1 raises the error)")
