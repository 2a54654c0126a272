"""Strict YAML reading for configs: UTF-8 text, no key given twice, values checked against
annotations (:func:`check_type`).

PyYAML's ``safe_load`` silently keeps the last of two equal keys in a mapping, so a config
with ``steps:`` twice would run with whichever came last. Here the document is composed
into nodes first, every mapping is checked for repeated keys (reported with their dotted
path and both line numbers), and only then constructed.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import numbers
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping gives the same key twice.

    Attributes:
      key: dotted path of the key (``train.steps``).
      line, first_line: 1-based lines of the repeated and of the first occurrence.
    """

    def __init__(self, key: str, line: int, first_line: int):
        self.key, self.line, self.first_line = key, line, first_line
        self.reason = f"given twice (lines {first_line} and {line}); keep one"
        super().__init__(f"{key}: {self.reason}")


class NotUtf8Error(ValueError):
    """The file's bytes are not UTF-8 text."""


def _check_duplicates(node: yaml.Node, path: tuple[str, ...] = ()) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            sub = path
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                line = key.start_mark.line + 1
                if key.value in seen:
                    raise DuplicateKeyError(".".join((*path, key.value)), line, seen[key.value])
                seen[key.value] = line
                sub = (*path, key.value)
            _check_duplicates(value, sub)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            _check_duplicates(value, (*path, str(i)))


def load(text: str) -> Any:
    """Like ``yaml.safe_load(text)``, but a key given twice raises :class:`DuplicateKeyError`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'steps'?)"`` for the closest of ``choices`` to a mistyped ``word``
    (``difflib``), or ``""`` when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe_error(err: yaml.YAMLError) -> str:
    """A YAML error in one line, ``line L, column C: problem (context at line L)``, without
    PyYAML's ``in "<unicode string>"`` lines (the caller names the file)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(err).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
    extra = ""
    if context:
        at = f" at line {cmark.line + 1}, column {cmark.column + 1}" if cmark else ""
        extra = f" ({context}{at})"
    return f"{where}: {problem}{extra}"


def read_text(path: str | Path) -> str:
    """The file's text, decoded as UTF-8.

    Raises:
      NotUtf8Error: the bytes are not UTF-8 (the message gives the first bad byte).
      OSError: the file cannot be read.
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = data[err.start : err.start + 1].hex()
        raise NotUtf8Error(
            f"not UTF-8 text (byte 0x{bad} at offset {err.start}); save the file as UTF-8"
        ) from None


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def check_type(value: Any, tp: Any) -> tuple[bool, Any]:
    """Does ``value`` fit annotation ``tp``? Returns ``(ok, coerced value)``.

    Handles the annotations configs use (int, float, bool, str, ``X | None``, tuples
    and sequences of those); anything else is accepted as is. ``bool`` is not an int
    here, an int is a float, and a string such as ``"1e-3"`` is a float (YAML 1.1
    reads ``1e-3`` without a dot as a string).
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            return (type(None) in args), value
        for a in args:
            if a is type(None):
                continue
            ok, v = check_type(value, a)
            if ok:
                return True, v
        return False, value
    if tp is Any or tp is inspect.Parameter.empty:
        return True, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok, (int(value) if ok else value)
    if tp is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin in (tuple, list, collections.abc.Sequence) or tp in (tuple, list):
        if not isinstance(value, list | tuple):
            return False, value
        args = typing.get_args(tp)
        item = args[0] if args and (len(args) == 1 or args[-1] is Ellipsis) else Any
        out = []
        for v in value:
            ok, v = check_type(v, item)
            if not ok:
                return False, value
            out.append(v)
        return True, tuple(out)
    return True, value


def describe_type(tp) -> str:
    """``int or null``-style text for an annotation (error messages)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return _type_name(tp)
