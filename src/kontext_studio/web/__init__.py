"""The web studio: server-rendered pages (Jinja2) with htmx and a little vanilla JavaScript, served by the
service at ``/`` on the same origin as the API it is built on.

Pages read through the same stores as the API; everything that changes state goes through the public
``/v1`` API from the browser, authenticated by the studio's cookie plus its CSRF token.
"""

from kontext_studio.web.routes import mount_studio

__all__ = ["mount_studio"]
