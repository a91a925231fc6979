"""Command-line options generated from a dataclass, so that the dataclass stays the one place of each default.

Used by ``sentizoo amalgamate`` / ``evaluate`` (:class:`~sentizoo.options.TrainOptions`) and fit for
``training.pretrain`` (its ``PretrainConfig``): a documented API that ``training/`` may import.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Mapping, Optional, Union

__all__ = ['add_dataclass_arguments']


def _plain_type(hint: Any) -> Any:
    """``Optional[X]`` -> ``X``; a union with ``bool`` (``TrainOptions.amp``: True, False or 'bf16') -> ``bool``:
    the command line offers the flag pair, the other values stay for Python callers; any other hint as it is."""
    if typing.get_origin(hint) is not Union:
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 else bool if bool in args else hint


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type,
                            fields: Optional[Mapping[str, Union[str, Mapping[str, Any]]]] = None) -> None:
    """Add one ``--<name>`` option per field of the dataclass ``cls`` (``fields``: only these, in this order),
    whose default is the field's.

    The argparse keywords of an option are the field's ``metadata`` (``help``, ``choices``, ``required`` ...)
    updated by ``fields[name]``: a help text, or a dict of keywords (``help``, ``type``, ``metavar`` ...). A
    ``bool`` (or ``Optional[bool]``) field becomes ``--name`` / ``--no-name``; ``int`` and ``float`` fields are
    typed, any other is a string. Help texts may say ``%(default)s``.
    """
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for name, extra in (fields if fields is not None else dict.fromkeys(by_name, {})).items():
        field = by_name[name]
        kwargs = dict(field.metadata)
        kwargs.update({'help': extra} if isinstance(extra, str) else extra)
        flag = '--' + name.replace('_', '-')
        kind = _plain_type(hints[name])
        if kind is bool:
            parser.add_argument(flag, default=field.default, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            kwargs.setdefault('type', kind if kind in (int, float) else str)
            parser.add_argument(flag, default=field.default, **kwargs)
