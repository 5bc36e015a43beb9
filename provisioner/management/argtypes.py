"""argparse types shared by the management commands."""

from __future__ import annotations

import argparse


def positive_seconds(text: str) -> float:
    """A positive, finite number of seconds: 0 or less would run a loop back to back or make requests
    refuse mid-way, and nan or inf never wait or never time out."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return seconds
