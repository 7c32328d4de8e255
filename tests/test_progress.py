"""The progress display (`jacsens._progress`): which display where, and what the plain
lines written to logs say, checked against numbers computed by hand."""

import io
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jacsens
from jacsens import _progress
from jacsens._progress import LineProgress, check_progress, log_interval, progress_bar


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("value", [True, False, "auto", np.True_, np.False_])
def test_progress_accepts_true_false_auto(value):
    got = check_progress(value)
    assert got == (value if isinstance(value, str) else bool(value))
    assert type(got) is (str if isinstance(value, str) else bool)


@pytest.mark.parametrize("value", ["yes", "Auto", 1, 0, None, 2.0])
def test_progress_refuses_anything_else(value):
    with pytest.raises(ValueError, match=r"`progress` must be True, False or 'auto', got"):
        check_progress(value)
    with pytest.raises(ValueError, match="`progress`"):
        progress_bar(value, total=3, desc="x", unit="step")


def test_log_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(_progress.INTERVAL_ENV, raising=False)
    assert log_interval() == 30.0
    monkeypatch.setenv(_progress.INTERVAL_ENV, " 2.5 ")
    assert log_interval() == 2.5
    monkeypatch.setenv(_progress.INTERVAL_ENV, "0")
    assert log_interval() == 0.0
    for bad in ("-1", "nan", "inf", "soon"):
        monkeypatch.setenv(_progress.INTERVAL_ENV, bad)
        with pytest.raises(ValueError, match=r"\$JACSENS_PROGRESS_INTERVAL .*got '"):
            log_interval()


# --------------------------------------------------------------------------- which display


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_off_gives_nothing(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Stream(tty=True))
    assert progress_bar(False, total=10, desc="job", unit="step") is None


@pytest.mark.parametrize("progress", [True, "auto"])
def test_logs_get_lines(monkeypatch, progress):
    monkeypatch.setattr(sys, "stderr", Stream(tty=False))
    monkeypatch.setattr(_progress, "in_notebook", lambda: False)
    bar = progress_bar(progress, total=10, desc="job", unit="step", leave=False)
    assert isinstance(bar, LineProgress)
    assert bar.stream is sys.stderr and bar.quiet_start is (progress == "auto")


@pytest.mark.parametrize("progress, delay", [(True, 0.0), ("auto", _progress.AUTO_DELAY)])
@pytest.mark.parametrize("where", ["terminal", "notebook"])
def test_terminals_and_notebooks_get_tqdm_auto(monkeypatch, progress, delay, where):
    tqdm_auto = pytest.importorskip("tqdm.auto")
    monkeypatch.setattr(sys, "stderr", Stream(tty=where == "terminal"))
    monkeypatch.setattr(_progress, "in_notebook", lambda: where == "notebook")
    bar = progress_bar(progress, total=10, desc="job", unit="step", initial=3)
    try:
        assert isinstance(bar, tqdm_auto.tqdm)
        assert (bar.total, bar.n, bar.delay, bar.desc) == (10, 3, delay, "job")
    finally:
        bar.close()


def test_without_tqdm_a_terminal_gets_lines(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Stream(tty=True))
    monkeypatch.setattr(_progress, "_tqdm_class", lambda: None)
    assert isinstance(progress_bar(True, total=4, desc="job", unit="step"), LineProgress)


def test_in_notebook_is_false_outside_a_kernel():
    assert _progress.in_notebook() is False


# --------------------------------------------------------------------------- the lines


def test_lines_every_interval_with_rate_and_time_left():
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(
        total=1000, desc="sensitivity", unit="samples", stream=out, interval=10.0, clock=clock
    )
    clock.now += 4.0
    bar.update(100)  # 4 s < 10 s: silent
    assert out.getvalue() == ""
    clock.now += 8.0
    bar.update(300)  # 12 s: 400 samples, 400/12 = 33.3 samples/s, 600 left: 18 s
    assert lines(out.getvalue()) == [
        "sensitivity: 400/1,000 samples (40%) after 12.0 s, 33.3 samples/s, about 18.0 s left"
    ]
    clock.now += 9.0
    bar.update(100)  # 9 s after the last line: silent
    clock.now += 169.0
    bar.update(100)  # 190 s: 600 samples, 3.16/s, 400 left: 126.7 s
    assert lines(out.getvalue())[-1] == (
        "sensitivity: 600/1,000 samples (60%) after 3 min 10 s, 3.16 samples/s, "
        "about 2 min 07 s left"
    )
    clock.now += 10.0
    bar.update(400)
    bar.close()
    bar.close()  # a second close prints nothing
    assert lines(out.getvalue())[-2:] == [
        "sensitivity: 1,000/1,000 samples (100%) after 3 min 20 s, 5 samples/s",
        "sensitivity: done, 1,000 samples in 3 min 20 s (5 samples/s)",
    ]
    assert len(lines(out.getvalue())) == 4


def test_lines_with_postfix_resume_and_unknown_total():
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(
        total=None, desc="fit", unit="epoch", initial=5, stream=out, interval=0.0, clock=clock
    )
    clock.now += 2.0
    bar.set_postfix({"loss": "0.5"}, refresh=False, val="0.7")
    bar.update(4)  # 4 epochs in 2 s since the resume (the 5 done before do not count)
    assert lines(out.getvalue()) == ["fit: 9 epoch after 2.0 s, 2 epoch/s; loss=0.5, val=0.7"]
    clock.now += 3600.0
    bar.close()
    assert lines(out.getvalue())[-1] == (
        "fit: done, 9 epoch in 1 h 00 min (0.00111 epoch/s); loss=0.5, val=0.7"
    )


def test_stopped_early_says_so():
    out, clock = io.StringIO(), FakeClock()
    bar = LineProgress(total=8, desc="fit", unit="epoch", stream=out, interval=60.0, clock=clock)
    clock.now += 1.0
    bar.update(3)
    bar.close()
    assert lines(out.getvalue()) == ["fit: stopped at 3/8 epoch (38%) in 1.0 s (3 epoch/s)"]


def test_auto_is_silent_for_short_jobs_and_closes_long_ones():
    out, clock = io.StringIO(), FakeClock()
    short = LineProgress(
        total=8, desc="a", unit="step", quiet_start=True, stream=out, interval=5.0, clock=clock
    )
    clock.now += 4.0
    short.update(8)
    short.close()
    assert out.getvalue() == ""
    long = LineProgress(
        total=8, desc="b", unit="step", quiet_start=True, stream=out, interval=5.0, clock=clock
    )
    clock.now += 6.0
    long.update(4)
    clock.now += 2.0
    long.update(4)
    long.close()
    assert lines(out.getvalue()) == [
        "b: 4/8 step (50%) after 6.0 s, 0.667 step/s, about 6.0 s left",
        "b: done, 8 step in 8.0 s (1 step/s)",
    ]


# --------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_sensitivity_writes_log_lines(monkeypatch, capsys, dtype):
    monkeypatch.setenv(_progress.INTERVAL_ENV, "0")
    w = jnp.arange(1.0, 4.0, dtype=dtype)  # the suite runs with x64 on: both are real
    X = np.ones((300, 3), dtype=dtype)
    r = jacsens.sensitivity(lambda x: w @ x, X, chunk_size=100, progress=True)
    np.testing.assert_array_equal(r.mean, [[1.0, 2.0, 3.0]])
    got = lines(capsys.readouterr().err)
    counts = [re.match(r"sensitivity: ([\d,]+)/300 samples", line) for line in got[:-1]]
    assert [m.group(1) for m in counts] == ["100", "200", "300"]
    assert re.fullmatch(r"sensitivity: done, 300 samples in .*", got[-1])
    assert "\r" not in "".join(got)


def test_sensitivity_auto_and_off_are_silent_in_short_jobs(monkeypatch, capsys):
    w = jnp.arange(1.0, 4.0, dtype=jnp.float32)
    X = np.ones((64, 3), dtype=np.float32)
    monkeypatch.setenv(_progress.INTERVAL_ENV, "3600")
    jacsens.sensitivity(lambda x: w @ x, X, chunk_size=16, progress="auto")
    jacsens.sensitivity(lambda x: w @ x, X, chunk_size=16, progress=False)
    monkeypatch.setenv(_progress.INTERVAL_ENV, "0")
    jacsens.sensitivity(lambda x: w @ x, X, chunk_size=16, progress=False)
    assert capsys.readouterr().err == ""


def test_fit_logs_each_epoch_with_its_losses(monkeypatch, capsys):
    monkeypatch.setenv(_progress.INTERVAL_ENV, "0")
    key = jax.random.key(0)
    X = jax.random.normal(key, (32, 2), dtype=jnp.float32)
    Y = X @ jnp.asarray([1.0, -2.0], jnp.float32)
    model = jacsens.MLP(2, (), "scalar", key=key, dtype=jnp.float32)
    _, history = jacsens.fit(
        model,
        X,
        Y,
        optimizer=optax.sgd(0.1),
        epochs=3,
        batch_size=8,
        key=key,
        validation=(X, Y),
        progress=True,
    )
    got = lines(capsys.readouterr().err)
    assert len(got) == 4
    for epoch, line in enumerate(got[:3]):
        assert line.startswith(f"fit: {epoch + 1}/3 epoch ")
        loss, val = history.train_loss[epoch], history.val_loss[epoch]
        assert line.endswith(f"; loss={loss:.4g}, val={val:.4g}")
    assert got[3].startswith("fit: done, 3 epoch in ")
