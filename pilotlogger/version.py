"""The release number: a leaf module, so that any layer can name itself without importing the package."""

__version__ = "0.1.0"
