"""Errors the command line tells apart; standard library only."""


class UsageError(ValueError):
    """A bad argument or a refused output, found before any work: the command exits with status 2, as argparse does."""
