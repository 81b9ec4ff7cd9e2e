"""Deploy hooks: a URL and a secret with which a CI pipeline rolls a deployment out (signature checks, calls)."""
