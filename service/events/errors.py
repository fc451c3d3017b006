"""The error a sender raises when an event did not get through (it is retried)."""

from __future__ import annotations


class DeliveryError(Exception):
    """This try failed: the target is down, slow, refused it, or answered otherwise."""
