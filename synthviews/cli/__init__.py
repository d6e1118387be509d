"""The ``synthviews`` command line, the top layer: parses, calls the library, prints.

``app`` holds ``main`` (user errors as one line, exit 2) and ``build_parser``, which adds the verbs
of one module per group: ``datasets`` (preview, generate, verify, merge, info), ``analysis``
(analyze, train-walker), ``hub`` (push) and ``train`` (train-gan, train-ddpm). ``_common`` has the parser pieces
several groups share (the model options); ``_flags`` builds flags from settings dataclasses.
"""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
