"""Small instrumented services the end-to-end tests run under real servers.

Each is configured only by the environment (``OTEL_SERVICE_NAME``, ``OBSKIT_TRACES_FILE``,
``OTEL_BSP_SCHEDULE_DELAY``, ``PROMETHEUS_MULTIPROC_DIR``...) and serves the same routes:

- ``GET /items/<id>``: a JSON item (``?delay_ms=`` simulates up to 1 s of work);
- ``GET /call?url=...``: calls ``url`` (another service) and answers ``{"status": <its status>}``;
- ``GET /metrics``: obskit's Prometheus endpoint.

``flask_service`` (requests), ``fastapi_service`` (httpx.AsyncClient) and ``django_service``
(httpx.Client) use a different HTTP client each, so every outbound hook is crossed. Run them from
this directory (or with it on ``sys.path``)::

    gunicorn -b 127.0.0.1:8001 flask_service:app
    uvicorn --port 8002 fastapi_service:app
    gunicorn -b 127.0.0.1:8003 django_service.wsgi:application

``/call`` only calls hosts listed in ``SERVICES_CALL_ALLOWED_HOSTS`` (default: loopback), so an
example left running is not an open proxy.
"""
