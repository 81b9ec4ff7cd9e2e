"""Imported once by the render forkserver (never by the application itself): loads and warms up what a
render child needs, so that each child forked from the server starts with Jinja's compiler, the sandbox and
the YAML loader already imported and exercised."""

from __future__ import annotations

from backend.app.services.stacks import bounded_render, templating

templating.render_stack(
    "services:\n{% for n in range(2) %}  app{{ n }}:\n    image: \"{{ image | default('x') }}\"\n{% endfor %}",
    [],
    {"image": "x"},
)

__all__ = ["bounded_render"]
