"""rpad: a realtime presence daemon on Trio."""

__version__ = "0.1.0"
