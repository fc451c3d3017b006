"""The admission queue's receiving stage (``utils.admission``): places and the byte budget."""

from __future__ import annotations

import pytest

from utils.admission import Admission, QueueFull


def test_bodies_in_transit_share_a_byte_budget() -> None:
    admission = Admission(4, 8, receive_bytes=100)
    with admission.receive(60):
        with admission.receive(40):
            with pytest.raises(QueueFull):
                admission.receive(1)
        assert admission.receiving_bytes == 60
    assert admission.idle and admission.received_bytes_total == 100
    with admission.receive(500):  # alone, a body always fits
        pass
