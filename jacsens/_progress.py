"""The progress bar shared by long-running functions."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(enabled: bool, **tqdm_kwargs: Any):
    """A tqdm bar if `enabled`, stderr is a terminal and tqdm is installed; else `None`.

    tqdm is optional (the `progress` extra): without it, long work simply runs silently.
    """
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(**tqdm_kwargs)
