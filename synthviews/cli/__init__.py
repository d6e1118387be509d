"""The ``synthviews`` command line: every argparse line lives in this package."""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
