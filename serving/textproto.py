"""A small protobuf text-format reader for the config messages whose protos pip does not ship.

`tensorflow-serving-api` has no `BatchingParameters` or `MonitoringConfig` module, so their files
(`--batching_parameters_file`, `--monitoring_config_file`) are read with this instead.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<punct>[{}:;,<>\[\]])
      | (?P<word>[A-Za-z0-9_.+\-]+)
    )""",
    re.VERBOSE,
)

Message = dict[str, list[Any]]


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"unexpected character at offset {pos}: {text[pos:pos + 10]!r}")
        pos = match.end()
        if match.group("comment") is None:
            out.append(match.group(match.lastgroup or "word"))
    return out


def _scalar(token: str) -> Any:
    if token[0] in "\"'":
        return bytes(token[1:-1], "utf-8").decode("unicode_escape")
    if token in ("true", "True", "t"):
        return True
    if token in ("false", "False", "f"):
        return False
    try:
        return int(token, 0)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        return token  # an enum name


def parse(text: str) -> Message:
    """Fields to lists of values; sub-messages are dicts of the same shape."""
    tokens = _tokens(text)
    pos = 0

    def message(closing: str | None) -> Message:
        nonlocal pos
        fields: Message = {}
        while pos < len(tokens):
            tok = tokens[pos]
            if closing is not None and tok == closing:
                pos += 1
                return fields
            if tok in ",;":
                pos += 1
                continue
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok):
                raise ValueError(f"expected a field name, got {tok!r}")
            pos += 1
            if pos < len(tokens) and tokens[pos] == ":":
                pos += 1
            if pos >= len(tokens):
                raise ValueError(f"missing value for {tok}")
            nxt = tokens[pos]
            if nxt in ("{", "<"):
                pos += 1
                value: Any = message("}" if nxt == "{" else ">")
            elif nxt == "[":
                pos += 1
                items: list[Any] = []
                while tokens[pos] != "]":
                    if tokens[pos] != ",":
                        items.append(_scalar(tokens[pos]))
                    pos += 1
                pos += 1
                fields.setdefault(tok, []).extend(items)
                continue
            else:
                pos += 1
                value = _scalar(nxt)
            fields.setdefault(tok, []).append(value)
        if closing is not None:
            raise ValueError("unterminated message")
        return fields

    return message(None)


def scalar(fields: Message, name: str, default: Any = None) -> Any:
    """Last value of a field; a `{ value: x }` wrapper message is unwrapped."""
    values = fields.get(name)
    if not values:
        return default
    value = values[-1]
    if isinstance(value, dict):
        return scalar(value, "value", default)
    return value
