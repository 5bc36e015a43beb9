"""Service errors as sentences for people: capitalised, ending with a full stop, with a hint where useful."""

from __future__ import annotations

import re

from provisioner.errors import CapacityError, NeocloudError, QuotaExceeded


def sentence(exc: NeocloudError | str) -> str:
    """``"not enough capacity: ..."`` -> ``"Not enough capacity: ...."`` (no doubled full stop). Pure."""
    text = str(exc).strip()
    # Capitalise a leading plain word ("not enough ..."), never a name ("node-01 is busy").
    if re.match(r"[a-z]+(?=[\s:,;]|$)", text):
        text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else f"{text}."


def reservation_refusal(exc: NeocloudError) -> str:
    """Why a reservation was refused, with what the customer can do about it."""
    if isinstance(exc, CapacityError):
        hint = "Try fewer servers, another type, or a later window (the catalog shows what is free)."
        return f"{sentence(exc)} {hint}"
    if isinstance(exc, QuotaExceeded):
        hint = "Release servers you no longer need, or ask us to raise the quota."
        return f"Quota reached: {sentence(exc)} {hint}"
    return sentence(exc)
