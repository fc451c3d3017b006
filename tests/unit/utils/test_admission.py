"""Places counted in images: a request takes one per image, a model at its limit refuses
at once, and a request larger than the whole limit runs only alone."""

from __future__ import annotations

import pytest

from utils.admission import Admission, QueueFull, Receiving


def test_places_are_counted_in_images() -> None:
    admission = Admission(4, name="colours")
    first = admission.enter(3)
    with pytest.raises(QueueFull, match="model colours is at capacity"):
        admission.enter(2)
    second = admission.enter(1)
    with pytest.raises(QueueFull):
        admission.check()
    with first:
        pass
    admission.check()  # three places back
    with second:
        pass
    assert admission.in_progress == 0
    assert (admission.admitted_total, admission.rejected_total) == (2, 2)


def test_a_request_larger_than_the_limit_runs_alone() -> None:
    admission = Admission(3)
    with admission.enter(16):
        assert admission.in_progress == 16
        with pytest.raises(QueueFull):
            admission.enter(1)
    with admission.enter(1), pytest.raises(QueueFull):
        admission.enter(16)


def test_a_place_is_given_back_once() -> None:
    receiving = Receiving(1)
    place = receiving.receive()
    with pytest.raises(QueueFull):
        receiving.receive()
    with place:
        pass
    place.__exit__(None, None, None)
    assert receiving.receiving == 0
