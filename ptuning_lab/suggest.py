"""'Did you mean ...?' for names a user types: tasks, encoder methods."""
from __future__ import annotations

import difflib
from typing import Iterable


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` Did you mean 'capital'?`` when ``name`` is close to one of ``choices``, else ``""``.

    >>> did_you_mean("capitol", ["capital", "continent"])
    " Did you mean 'capital'?"
    """
    close = difflib.get_close_matches(str(name).lower(), list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
