"""The one error for configuration ipam cannot use: its settings, the declared file kept in Git, a CNI network
configuration.  Standard library only: the CNI plugin's zipapp carries it.  The message names the setting or
field and the reason; ``field`` and ``reason`` are kept apart where the caller knows both (a CNI error object
names the field)."""

from __future__ import annotations


class ConfigError(ValueError):
    def __init__(self, what: str, reason: str | None = None) -> None:
        """``ConfigError("IPAM_X=1: expected ...")``, or ``ConfigError("ipam.range", "expected a CIDR")``."""
        super().__init__(what if reason is None else f"{what}: {reason}")
        self.field = None if reason is None else what
        self.reason = what if reason is None else reason
