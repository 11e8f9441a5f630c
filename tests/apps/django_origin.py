"""A minimal Django project (Django's own ``get_wsgi_application``, no prefork import) that
reports where it thinks a request came from.

``GET /who``: ``request.scheme``, ``is_secure()``, ``META['REMOTE_ADDR']``,
``build_absolute_uri('/who')`` and the forwarding headers as the app received them.
Django's ``SECURE_PROXY_SSL_HEADER`` is left unset: the scheme must come from the server.
"""

from __future__ import annotations

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="prefork-tests",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={},
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402  (after settings)
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


def who(request: HttpRequest) -> JsonResponse:
    return JsonResponse({
        "scheme": request.scheme,
        "is_secure": request.is_secure(),
        "remote_addr": request.META.get("REMOTE_ADDR"),
        "external_url": request.build_absolute_uri("/who"),
        "x_forwarded_for": request.META.get("HTTP_X_FORWARDED_FOR"),
        "x_forwarded_proto": request.META.get("HTTP_X_FORWARDED_PROTO"),
        "forwarded": request.META.get("HTTP_FORWARDED"),
    })


urlpatterns = [path("who", who)]
app = get_wsgi_application()
