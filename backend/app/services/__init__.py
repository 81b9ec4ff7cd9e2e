"""Domain services.

Importing the package registers the session hooks that keep the per-status deployment counts current
(:mod:`backend.app.services.deployments.status_counts`) and queue the notifications a deployment's end owes
(:mod:`backend.app.services.notifications.outbox`), whichever service a process uses first.
"""

from backend.app.services.deployments import status_counts as _status_counts  # noqa: F401 - registers session hooks
from backend.app.services.notifications import outbox as _notification_outbox  # noqa: F401 - registers session hooks
