"""The in-process runtime: loaded models, admission control, lifecycle. No HTTP here."""

from nimble.runtime.runtime import Runtime, RuntimeConfig, ServiceState

__all__ = ["Runtime", "RuntimeConfig", "ServiceState"]
