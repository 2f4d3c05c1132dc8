"""The in-process runtime: loaded models, admission control, lifecycle. No HTTP here."""

from nimble.runtime.config import RuntimeConfig
from nimble.runtime.runtime import Runtime, ServiceState

__all__ = ["Runtime", "RuntimeConfig", "ServiceState"]
