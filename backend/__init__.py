"""WindFlow: deploy Docker stacks and watch every deployment live."""

__version__ = "0.1.0"
