"""Webhooks: prediction events recorded in an outbox table and delivered, signed, through the SSRF guard.

``webhooks_base`` is the interface the job store and worker call (``Notifier.notify``); ``webhooks_sql``
the database outbox (``WebhookOutbox``) and the thread that drains it (``WebhookSender``).

Typical wiring::

    outbox = WebhookOutbox(sessions, settings.webhook_secret)    # safe_client(): public https only
    sender = WebhookSender(outbox)
    sender.start()                                               # wakes on every notify
    ...
    outbox.notify(job_id, "completed", envelope)                 # from the worker / job store
    ...
    sender.stop()
"""

from kontext_studio.service.webhooks.webhooks_base import RETRIED_EVENTS, Notifier, NullNotifier
from kontext_studio.service.webhooks.webhooks_sql import (
    DEFAULT_BACKOFF,
    STATUS_NO_RESPONSE,
    STATUS_NO_WEBHOOK,
    STATUS_REFUSED,
    DeliveryState,
    WebhookOutbox,
    WebhookSender,
    default_envelope,
    describe_status,
)

__all__ = [
    "DEFAULT_BACKOFF",
    "RETRIED_EVENTS",
    "STATUS_NO_RESPONSE",
    "STATUS_NO_WEBHOOK",
    "STATUS_REFUSED",
    "DeliveryState",
    "Notifier",
    "NullNotifier",
    "WebhookOutbox",
    "WebhookSender",
    "default_envelope",
    "describe_status",
]
