"""Registries: an organisation's container registry credentials, and the pulls that use them."""
