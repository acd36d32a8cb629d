"""The HTTP service (`triage serve`): :func:`service.app.create_app` assembles the routers of
:mod:`service.routers` over the dependencies of :mod:`service.deps`."""
