"""A failed service's last lines are logged at the level each line names (the drawer colours and filters them)."""

import pytest

from backend.app.engines.docker_base import service_line_level
from backend.app.models.enums import LogLevel


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("ERROR database unreachable", LogLevel.ERROR),
        ("2026-01-01T00:00:00Z [fatal] out of memory", LogLevel.ERROR),
        ("WARNING disk almost full", LogLevel.WARNING),
        ('time="..." level=warn msg="slow"', LogLevel.WARNING),
        ("DEBUG cache warmed", LogLevel.DEBUG),
        ("[trace] entering main", LogLevel.DEBUG),
        ("INFO listening on :8080", LogLevel.INFO),
        ("INFO: no error so far", LogLevel.INFO),  # the first level word wins
        ("Segmentation fault", LogLevel.ERROR),  # names no level: part of the failure
        ("informational debugging", LogLevel.ERROR),  # whole words only
    ],
)
def test_level_of_a_service_line(line: str, level: LogLevel) -> None:
    assert service_line_level(line) is level
