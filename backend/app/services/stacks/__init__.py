"""What gets deployed: stacks and their variable schema, the catalogue, and rendering templates (the sandboxed
``templating`` package, run off the event loop by ``bounded_render``)."""
