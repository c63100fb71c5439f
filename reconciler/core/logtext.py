"""Text from etcd (or any outside source) made safe for one log line.

A lease key or value is anybody-with-write-access's text: a newline in it
would forge a log record, and a 1 MB value would be a 1 MB line every time it
is mentioned.  Every log call that names such text passes it through ``esc``.
"""
from __future__ import annotations

import json

__all__ = ["LOG_VALUE_CHARS", "esc"]

#: Longest text taken from outside into one log line.
LOG_VALUE_CHARS = 200


def esc(text: object, limit: int = LOG_VALUE_CHARS) -> str:
    """Control characters escaped (JSON's way: ``\\n``, ``\\u001b``) and cut to ``limit`` characters,
    saying how much was cut."""
    s = json.dumps(str(text), ensure_ascii=False)[1:-1]
    if len(s) > limit:
        s = f"{s[:limit]}...({len(s) - limit} more)"
    return s
