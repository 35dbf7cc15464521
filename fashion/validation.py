"""Plain data from elsewhere (a bundle, a checkpoint) is checked with strict pydantic schemas; this
turns their errors into one message that names each offending field, the way the CLIs print them."""

from __future__ import annotations

import pydantic


def describe(err: pydantic.ValidationError, where: str = "") -> str:
    """`where.field: what is wrong (got value)`, the problems joined by '; '."""
    prefix = f"{where}." if where else ""
    return "; ".join(f"{prefix}{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']} (got {e.get('input')!r:.80})"
                     for e in err.errors())
