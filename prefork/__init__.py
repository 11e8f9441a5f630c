"""prefork: a pre-fork HTTP/1.1 + WebSocket server for Python.

Version and re-exports only; importing this package has no side effects.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
