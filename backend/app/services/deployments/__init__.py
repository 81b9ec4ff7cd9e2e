"""Running deployments: the state machine (the single choke point for statuses), the runner every executor calls,
the lifecycle actions, recovery and orphans, logs, redaction and retention.

``services/deployment_service.py`` (one level up, at the path the product guide names) is the entry point the
routes, the CLI and the guide's snippet use: creation, queries, actions, recovery.
"""
