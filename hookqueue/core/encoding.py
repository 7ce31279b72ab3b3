"""JSON: the one encoding of payloads, headers and results.

Everything hookqueue stores besides its own columns is JSON text, encoded here with one set of
rules, so a value refused as a payload is refused as a result too, with the same message.
Everything that could make the stored text unreadable later is refused *before* anything is
written: a value ``json`` cannot encode, a dict key that is not a string (``json`` would turn
``1`` into ``"1"`` and silently merge it with a ``"1"`` key), text that is not valid Unicode
(lone surrogates), and nesting deeper than :data:`MAX_DEPTH` (Python's decoder recurses once
per level, so a deep enough value is written fine and then cannot be read back).
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ValidationError

#: The deepest nesting of lists and objects a stored value may have. Well above what task
#: data needs, and well below what the decoder can read back on any thread's stack.
MAX_DEPTH = 500

#: ``json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)``, with
#: the encoder built once (json.dumps builds one per call when given options).
_ENCODE = json.JSONEncoder(allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode
#: Values whose decoded JSON is the value itself (nothing to copy, nothing nested).
IMMUTABLE_JSON = frozenset({type(None), str, int, float, bool})

_FIX = (
    "pass dicts with string keys, lists, strings, finite numbers, booleans and None only "
    "(convert datetimes to ISO strings, sets to lists, objects to dicts)"
)


def encode_json(field: str, value: Any, limit: int | None = None) -> str:
    """``value`` as compact JSON text, or a :class:`ValidationError` naming ``field``.

    :param field: the argument's name, for the error (``payload``, ``headers``, ``result``).
    :param limit: the largest text allowed, in UTF-8 bytes (None: no limit).
    :raises ValidationError: the value cannot be stored and read back as it is (see the
        module docs), or its text is over ``limit``.
    """
    if type(value) not in IMMUTABLE_JSON and _too_deep(value):
        raise ValidationError(
            field,
            "<deeply nested value>",
            f"is nested more than {MAX_DEPTH} levels deep",
            "flatten it, or store it elsewhere and put its address in the task",
        )
    try:
        text = _ENCODE(value)
    except (TypeError, ValueError) as exc:
        raise ValidationError(field, value, f"is not JSON-serialisable ({exc})", _FIX) from None
    except RecursionError:  # a value that contains itself
        raise ValidationError(
            field, "<self-referencing value>", "contains itself", "pass a tree, not a cycle"
        ) from None
    if not text.isascii():
        try:
            size = len(text.encode())
        except UnicodeEncodeError as exc:
            raise ValidationError(
                field,
                value,
                f"contains text that is not valid Unicode ({exc.reason})",
                "remove lone surrogates (decode bytes with errors='replace')",
            ) from None
    else:
        size = len(text)
    if size > 2 and _has_non_string_key(value):
        raise ValidationError(
            field, value, "has a dict key that is not a string", "convert keys to strings yourself"
        )
    if limit is not None and size > limit:
        raise ValidationError(
            field,
            f"<{size} bytes of JSON>",
            f"is larger than max_payload_bytes={limit}",
            "store large data elsewhere and put its path or URL in the payload, or raise "
            "Queue(max_payload_bytes=...)",
        )
    return text


def _too_deep(value: Any) -> bool:
    """True if lists, tuples and dicts nest more than :data:`MAX_DEPTH` levels in ``value``
    (iterative: no recursion limit of its own; a cycle counts as too deep)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        for child in children:
            if isinstance(child, dict | list | tuple):
                stack.append((child, depth + 1))
    return False


def _has_non_string_key(value: Any) -> bool:
    """True if any dict inside ``value`` has a key that is not a str (iterative; the value
    has already been encoded, so it is finite)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return True
                if isinstance(child, dict | list | tuple):
                    stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(child for child in item if isinstance(child, dict | list | tuple))
    return False


def flat_copy(value: Any) -> dict[str, Any] | None:
    """A copy of ``value`` if it is a dict of str keys and immutable JSON values (exact types:
    a str or int subclass, such as an enum, is stored as its plain value) — equal to what
    decoding its JSON gives, without encoding and decoding it; else None."""
    if type(value) is not dict:
        return None
    immutable = IMMUTABLE_JSON
    for key, item in value.items():
        if type(key) is not str or type(item) not in immutable:
            return None
    return value.copy()


__all__ = ["MAX_DEPTH", "encode_json", "flat_copy"]
