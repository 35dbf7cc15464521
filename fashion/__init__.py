"""fashion: tag product photos with their catalogue attributes in one forward pass."""

__version__ = "0.1.0"
