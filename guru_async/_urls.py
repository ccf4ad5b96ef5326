"""URL safety rules: which URLs the SDK will send a token, a file or a request to, and how
far it follows redirects.

Plain http is refused except to this machine (or when the caller allows it for a trusted
network), so a typo or a hostile redirect never sends a token or a presigned upload in clear.
Redirects (of a source URL, of a download) are followed by hand, one hop at a time, each hop
checked by these rules, at most ``MAX_REDIRECTS`` of them.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from yarl import URL

from ._errors import ResponseDecodeError, redact

# Redirects a source URL or a download may take before it is refused (curl's and aiohttp's
# default is 10).
MAX_REDIRECTS: Final = 10
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def checked_url(url: str, *, name: str, allow_insecure_http: bool) -> URL:
    """Parse ``url``, refusing plain http to anything but this machine unless allowed."""
    if not isinstance(url, str):
        raise TypeError(f"{name} must be a str, got {type(url).__name__}")
    parsed = URL(url)
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise ValueError(f"{name} must be an http(s) URL, got {redact(url)[:120]!r}")
    if parsed.scheme == "http" and not allow_insecure_http and not _is_loopback(parsed.host):
        raise ValueError(
            f"{name} uses plain http to {parsed.host}, which would expose tokens; use https, "
            "or pass allow_insecure_http=True for a trusted network"
        )
    return parsed


def check_server_url(url: str, *, name: str, what: str, allow_insecure_http: bool) -> None:
    """A URL the API handed us must be http(s), and https unless to this machine."""
    try:
        checked_url(url, name=name, allow_insecure_http=allow_insecure_http)
    except (TypeError, ValueError) as exc:
        reason = str(exc)
    else:
        return
    # Outside the handler, so no __context__: the bad URL is the server's, not the caller's.
    raise ResponseDecodeError(f"{what}: the API's {name} is unusable: {reason}")
