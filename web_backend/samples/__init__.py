"""Instant characters: rendered on this process's CPU (ONNX Runtime) and kept in a
small in-memory cache."""

__all__ = ["cache", "onnx"]
