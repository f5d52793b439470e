"""copd-ifm: implicit feature modification for self-supervised lung-CT and natural-image encoders."""

__version__ = "0.1.0"
