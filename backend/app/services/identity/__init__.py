"""Who may do what: users and their API tokens, logins and sessions, organisations, memberships and roles.

``organization_service`` holds the role checks (RBAC) every other service calls; nothing here imports the other
domains.
"""
