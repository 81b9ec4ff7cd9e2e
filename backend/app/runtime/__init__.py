"""Runtime: what keeps deployments moving in a running process.

Dispatch to an executor (Celery or the in-process asyncio executor), the background loops (recovery, reaper,
retention), worker presence, the Celery configuration and the embedded worker's manager
(``core/celery_manager.py``, a path the guide names), metrics, and the event transport and WebSocket hub.
It sits above the domain services and below the entry points (api, tasks, cli, main); see
``docs/architecture.md``.
"""
