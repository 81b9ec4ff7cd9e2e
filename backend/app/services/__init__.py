"""Domain services.

Importing the package registers the session hooks that keep the per-status deployment counts current
(:mod:`backend.app.services.deployments.status_counts`), whichever service a process uses first.
"""

from backend.app.services.deployments import status_counts as _status_counts  # noqa: F401 - registers session hooks
