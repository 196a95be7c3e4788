"""cai-kit: Constitutional AI self-alignment for open models."""

__version__ = "0.1.0"
