"""Sign-in lockout (django-axes): which client address a failed sign-in counts against.

Axes would otherwise read X-Forwarded-For itself; a client could then send a new forged
address with every guess and never reach the limit. The audit log's rule applies instead:
X-Forwarded-For is trusted only as far as REGENT_TRUSTED_PROXY_COUNT proxies wrote it.
"""

from django.http import HttpRequest

from apps.audit.context import client_ip


def lockout_client_ip(request: HttpRequest) -> str | None:
    """AXES_CLIENT_IP_CALLABLE: the same client address the audit log records."""
    return client_ip(request)
