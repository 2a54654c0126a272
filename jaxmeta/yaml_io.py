"""Strict YAML reading for configs: UTF-8 text, and no key given twice.

PyYAML's ``safe_load`` silently keeps the last of two equal keys in a mapping, so a config
with ``steps:`` twice would run with whichever came last. Here the document is composed
into nodes first, every mapping is checked for repeated keys (reported with their dotted
path and both line numbers), and only then constructed.
"""

from __future__ import annotations

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
