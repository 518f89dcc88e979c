"""reidcam: follow people across many cameras."""

__version__ = "0.1.0"
