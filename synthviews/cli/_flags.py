"""Flags from settings dataclasses: one ``--flag`` per field made with ``_util.settings.setting``."""

from __future__ import annotations

import argparse

from .._util.settings import described_fields, show_default


def flag_name(field) -> str:
    return field.metadata["setting"]["flag"] or "--" + field.name.replace("_", "-")


def add_flags(parser, cls) -> None:
    """Add a flag for every described field of ``cls`` to ``parser`` (a parser or an argument group).
    The value lands in ``args.<field name>``; a flag left out sets nothing, so :func:`given` keeps
    the dataclass default, even where the flag can say None (e.g. ``--truncation none``)."""
    for field in described_fields(cls):
        meta, flag = field.metadata["setting"], flag_name(field)
        kind = _argparse_type(meta["type"]) if meta["type"] else type(field.default) if field.default is not None else str
        metavar = None if meta["choices"] else flag[2:].replace("-", "_").upper()  # None: {a,b} lists the choices
        parser.add_argument(flag, dest=field.name, metavar=metavar, type=kind, choices=meta["choices"],
                            default=argparse.SUPPRESS,
                            help=f"{meta['help']} (default: {show_default(field.default)})")


def _argparse_type(parse):
    """``parse`` for argparse: its ValueError text becomes the one-line usage error."""
    def parse_flag(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse_flag.__name__ = parse.__name__  # argparse names the type in some messages
    return parse_flag


def given(args: argparse.Namespace, cls) -> dict:
    """The described fields of ``cls`` that the command line set, by field name (unset ones are absent)."""
    return {f.name: getattr(args, f.name) for f in described_fields(cls) if hasattr(args, f.name)}
