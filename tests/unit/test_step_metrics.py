"""The generation handler's metric window (handlers/step_metrics.py): a worker's per-token figures
reach TorchServe at most once a window, and always when it falls idle."""
from step_metrics import StepWindow


def test_busy_steps_emit_once_a_window_with_the_mean_gap() -> None:
    window = StepWindow(interval_s=1.0)
    assert window.due(idle=False, now=0.0)  # the first busy step: nothing sent yet
    assert window.take(idle=False, now=0.0) is None
    for now, gap in ((0.2, 20.0), (0.5, 30.0), (0.9, 40.0)):
        window.add_gap(gap)
        assert not window.due(idle=False, now=now)
    window.add_gap(50.0)
    assert window.due(idle=False, now=1.0)
    assert window.take(idle=False, now=1.0) == 35.0
    assert not window.due(idle=False, now=1.5) and window.take(idle=False, now=2.0) is None


def test_falling_idle_sends_what_is_left_once() -> None:
    window = StepWindow(interval_s=1.0)
    window.take(idle=False, now=0.0)
    window.add_gap(25.0)
    assert window.due(idle=True, now=0.1)  # within the window, but the worker fell idle
    assert window.take(idle=True, now=0.1) == 25.0
    assert not window.due(idle=True, now=0.2) and not window.due(idle=True, now=5.0)  # idle steps send no more
    assert window.due(idle=False, now=5.1)  # busy again: the gauges move off their idle values
