"""The Django example project (WSGI or ASGI; outbound calls with ``httpx.Client``)::

    gunicorn -b 127.0.0.1:8003 django_service.wsgi:application

Settings are in :mod:`django_service.settings`; obskit reads its options from the environment
(``settings.OBSKIT`` is empty).
"""
