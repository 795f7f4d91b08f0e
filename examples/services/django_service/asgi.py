"""The ASGI application: ``uvicorn django_service.asgi:application``.

Wrapped in obskit's ASGI middleware so that uvicorn's access lines carry the request's trace
(docs/logging.md, uvicorn); the Django middleware in settings.MIDDLEWARE then adds the route
and the view's exception to the same request: one SERVER span per request.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from obskit.asgi import ObskitMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", f"{__package__}.settings")

application = ObskitMiddleware(get_asgi_application())
