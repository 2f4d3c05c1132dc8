"""The gateway's tests start replicas and gateways as real processes (tests/e2e/conftest.py)."""

from tests.e2e.conftest import nimble_process

__all__ = ["nimble_process"]
