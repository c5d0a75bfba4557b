"""Fixtures shared across the unit tests."""

from tests.unit.api.served import served

__all__ = ["served"]
