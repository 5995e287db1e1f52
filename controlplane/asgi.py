"""ASGI entry of the OpenAI-compatible gateway (routing/gateway.py).

Served beside the WSGI web server by gunicorn with uvicorn workers
(``controlplane/gunicorn_gateway_conf.py``; ``make run`` starts it on GATEWAY_PORT):
upstream model calls are I/O, so each worker's event loop holds hundreds of requests in
flight while deciding and recording run in a small thread pool.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django.setup()

from routing.gateway import application  # noqa: E402  (needs Django set up)

__all__ = ["application"]
