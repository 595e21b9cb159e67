"""flashhead: a self-hosted, fal-compatible talking-head service."""
__version__ = "0.1.0"
