"""``synthviews <verb>``: the parser, assembled from one module per verb group, and ``main``.

User errors (bad paths, configs, policy or model files) print one line and
exit with status 2; there is no traceback for them.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading

# Only light modules here: torch and the models load inside main(), so Ctrl-C during start-up is one line too.
from .._util.checks import short
from ..errors import ConfigError

RESUMABLE_VERBS = ("generate", "merge")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one line on stderr (exit 2), like every other user error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {short(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Every verb; the verb groups' modules load here, inside main(), since some of them need torch."""
    parser = _Parser(
        prog="synthviews",
        description="Positive views for self-supervised learning from generators with several latent variables.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    from . import analysis, datasets, hub, train

    for group in (datasets, analysis, hub, train):
        group.add_commands(verbs)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__


class _Terminated(BaseException):
    """SIGTERM (what SLURM, Kubernetes or `kill` send) raised in the main thread, so cleanup runs."""


def _on_sigterm(signum, frame):
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    """Run one verb. User errors, OS errors (e.g. a full disk), Ctrl-C (exit 130) and SIGTERM
    (exit 143) end with one line on stderr; generate and merge remove their temporaries first."""
    verb, name = "", "synthviews"
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        args = build_parser().parse_args(argv)
        verb, name = args.verb, f"synthviews {args.verb}"
        return args.run(args)
    except ConfigError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable output, full disk, unreadable input: the message names the path
        hint = ("; free some space, then rerun the same command to resume"
                if e.errno in (errno.ENOSPC, errno.EDQUOT) and verb in RESUMABLE_VERBS else "")
        print(f"{name}: error: {e.strerror or e} ({e.filename or 'no file name'}){hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted" + _resume_hint(verb), file=sys.stderr)
        return 130
    except _Terminated:
        print(f"{name}: terminated (SIGTERM)" + _resume_hint(verb), file=sys.stderr)
        return 143
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _resume_hint(verb: str) -> str:
    return "; rerun the same command to resume" if verb in RESUMABLE_VERBS else ""


__all__ = ["build_parser", "main"]
