"""Print the backend's OpenAPI document (JSON) without starting a server or reading .env."""

import json
import os
import sys

_KEY = "openapi-dump-only-not-a-real-secret-0123456789"
os.environ.setdefault("SECRET_KEY", _KEY)  # backend.app.config builds a Settings at import

from backend.app.config import Settings  # noqa: E402
from backend.app.main import create_app  # noqa: E402

settings = Settings(_env_file=None, SECRET_KEY=_KEY)
json.dump(create_app(settings).openapi(), sys.stdout, indent=1, sort_keys=True)
