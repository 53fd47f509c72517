"""The team server: the run history, artifacts, tokens and secrets over HTTP (FastAPI on uvicorn).

``app.create_app(settings)`` builds the app; ``cli`` is ``rundock server``. The API contract (routes, roles,
JSON shapes) is the module docstrings of the ``routes_*`` modules, with records shaped by
``rundock.history.wire``. The server never runs jobs.
"""
