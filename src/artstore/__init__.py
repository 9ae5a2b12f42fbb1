"""artstore: a small, safe artifact store for what CI builds."""

__version__ = "0.1.0"
