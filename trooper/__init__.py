"""Trooper: per-turn cloud/local routing in front of the Anthropic Messages API."""

__version__ = "0.1.0"
