"""Explicit device moves (to_device)."""

__all__: list[str] = []
