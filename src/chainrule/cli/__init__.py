"""The ``chainrule`` command line (:mod:`.main`; the n-gram commands in :mod:`.ngram`)."""

from chainrule.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
