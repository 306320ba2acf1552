"""clipgan command line and client: the one entry point that reaches both backends.

:mod:`clipgan.cli` is the ``clipgan`` command; :mod:`clipgan.client` is a small REST
client of a running server.
"""

__all__ = ["cli", "client"]
