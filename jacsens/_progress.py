"""The progress display shared by long-running functions (`fit`, `sensitivity`).

Where the user works decides what they see:

- a **terminal** (stderr is a TTY): a `tqdm` bar;
- a **Jupyter notebook** (an IPython kernel): `tqdm.auto`'s bar, an `ipywidgets` widget
    when ipywidgets is installed, otherwise tqdm's text bar in the cell's output;
- anything else (stderr **redirected** to a log file, a batch job, CI): one plain line
    every `JACSENS_PROGRESS_INTERVAL` seconds (default 30) and one when the job ends, so
    a log shows that the job is alive without filling up with carriage returns.

tqdm is optional (the `progress` extra): without it, terminals and notebooks get the
plain lines too.

`progress=` takes `True` (show it from the start), `False` (nothing) or `"auto"` (show
it only once the job has run for a while: a bar after `AUTO_DELAY` = 2 seconds; in
logs, the periodic lines, and the closing line only if an earlier one was printed, so
jobs shorter than one interval print nothing). In logs the first line comes after one
interval in both cases; `True` always ends with the closing line.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from typing import Any, Literal, TextIO

import numpy as np

Progress = bool | Literal["auto"]

AUTO_DELAY = 2.0  # seconds before `"auto"` shows an interactive bar
DEFAULT_INTERVAL = 30.0  # seconds between lines in logs
INTERVAL_ENV = "JACSENS_PROGRESS_INTERVAL"


def check_progress(progress: Any, argname: str = "progress") -> Progress:
    """`progress` as given if it is `True`, `False` or `"auto"` (numpy bools accepted).

    **Raises:** `ValueError` naming `argname` for anything else.
    """
    if isinstance(progress, str) and progress == "auto":
        return "auto"
    if isinstance(progress, bool | np.bool_):
        return bool(progress)
    raise ValueError(f"`{argname}` must be True, False or 'auto', got {progress!r}.")


def log_interval() -> float:
    """Seconds between progress lines in logs: `$JACSENS_PROGRESS_INTERVAL` or 30.

    **Raises:** `ValueError` naming the variable if it is set to anything but a finite
    number `>= 0`.
    """
    raw = os.environ.get(INTERVAL_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"${INTERVAL_ENV} must be a number of seconds >= 0, got {raw!r}.")
    return value


def in_notebook() -> bool:
    """Whether this process is an IPython kernel (Jupyter, VS Code, Colab), where stderr
    is not a TTY but a front end shows a bar. Never imports IPython itself."""
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _interactive(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty()) if isatty is not None else False
    except (ValueError, OSError):  # a closed or detached stream
        tty = False
    return tty or in_notebook()


def _tqdm_class():
    try:
        with warnings.catch_warnings():
            # tqdm.auto warns once when it picks the notebook bar (experimental) or falls
            # back to text for lack of ipywidgets: neither is the user's concern here.
            warnings.simplefilter("ignore")
            from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def progress_bar(
    progress: Progress,
    *,
    total: int | None,
    desc: str,
    unit: str,
    initial: int = 0,
    **tqdm_kwargs: Any,
):
    """A progress display for a job of `total` steps, or `None` when `progress` is off.

    **Arguments:**

    - `progress`: `True`, `False` or `"auto"` (see the module docstring).
    - `total`: the number of steps (`None`: unknown).
    - `desc`, `unit`: the job's name and the name of a step ("samples", "epoch").
    - `initial`: steps already done (a resumed job).
    - `tqdm_kwargs`: passed on to `tqdm` only (`leave`, `unit_scale`, ...).

    **Returns:**

    An object with tqdm's `update(n)`, `set_postfix(dict, refresh=...)` and `close()`
    (a `tqdm.auto.tqdm` or a `LineProgress`), or `None`.

    **Raises:**

    `ValueError` for a `progress` other than `True`/`False`/`"auto"`, or a bad
    `$JACSENS_PROGRESS_INTERVAL`.
    """
    progress = check_progress(progress)
    if progress is False:
        return None
    auto = progress == "auto"
    stream = sys.stderr
    if _interactive(stream):
        tqdm = _tqdm_class()
        if tqdm is not None:
            return tqdm(
                total=total,
                desc=desc,
                unit=unit,
                initial=initial,
                delay=AUTO_DELAY if auto else 0.0,
                file=stream,
                **tqdm_kwargs,
            )
    return LineProgress(
        total=total, desc=desc, unit=unit, initial=initial, quiet_start=auto, stream=stream
    )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class LineProgress:
    """Progress as plain lines on a stream, at most one every `interval` seconds.

    Made for logs: no carriage returns, no terminal codes. A line reads
    `sensitivity: 4,096/10,000 samples (41%) after 12.3 s, 333 samples/s, about 17.8 s
    left`, followed by the postfix (`loss=0.12`); `close()` prints
    `sensitivity: done, 10,000 samples in 30.1 s (332 samples/s)` (or `stopped at ...`
    when fewer than `total` steps were counted).

    **Arguments:**

    - `total`, `desc`, `unit`, `initial`: as for `progress_bar`.
    - `quiet_start`: no closing line unless an earlier line was printed
        (`progress="auto"`). Either way the first line comes after `interval` seconds.
    - `stream`: where lines go (default: `sys.stderr` at construction).
    - `interval`: seconds between lines (default: `log_interval()`).
    - `clock`: the time source (`time.monotonic`); tests pass a fake one.
    """

    def __init__(
        self,
        *,
        total: int | None,
        desc: str,
        unit: str,
        initial: int = 0,
        quiet_start: bool = False,
        stream: TextIO | None = None,
        interval: float | None = None,
        clock=time.monotonic,
    ):
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.quiet_start = quiet_start
        self.stream = sys.stderr if stream is None else stream
        self.interval = log_interval() if interval is None else float(interval)
        self.clock = clock
        self.postfix = ""
        self.lines = 0
        self.closed = False
        self._initial = initial
        self._start = self._last = clock()

    def _rate(self, elapsed: float) -> float | None:
        done = self.n - self._initial
        return done / elapsed if elapsed > 0 and done > 0 else None

    def _count(self) -> str:
        if self.total is None:
            return f"{self.n:,} {self.unit}"
        pct = 100.0 * self.n / self.total if self.total else 100.0
        return f"{self.n:,}/{self.total:,} {self.unit} ({pct:.0f}%)"

    def _write(self, text: str) -> None:
        if self.postfix:
            text += f"; {self.postfix}"
        self.stream.write(text + "\n")
        self.stream.flush()
        self.lines += 1

    def update(self, n: int = 1) -> None:
        """Count `n` more steps; print a line if `interval` seconds passed since the last."""
        self.n += n
        now = self.clock()
        if now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self._start
        text = f"{self.desc}: {self._count()} after {_duration(elapsed)}"
        rate = self._rate(elapsed)
        if rate is not None:
            text += f", {rate:.3g} {self.unit}/s"
            if self.total is not None and self.total > self.n:
                text += f", about {_duration((self.total - self.n) / rate)} left"
        self._write(text)

    def set_postfix(
        self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        """Values shown after the count in the next line (`loss=0.12, val=0.2`)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        """Print the closing line (under `quiet_start`, only if a line was printed)."""
        if self.closed:
            return
        self.closed = True
        if self.quiet_start and self.lines == 0:
            return
        elapsed = self.clock() - self._start
        finished = self.total is None or self.n >= self.total
        head = "done," if finished else "stopped at"
        count = f"{self.n:,} {self.unit}" if finished else self._count()
        text = f"{self.desc}: {head} {count} in {_duration(elapsed)}"
        rate = self._rate(elapsed)
        if rate is not None:
            text += f" ({rate:.3g} {self.unit}/s)"
        self._write(text)
