import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django_application = get_wsgi_application()

from routing.fastpath import with_fast_path  # noqa: E402  (needs Django set up)

application = with_fast_path(django_application)
