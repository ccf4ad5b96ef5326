"""Route templates: the low-cardinality name of every kind of request the SDK sends.

Instrumentation hooks and traces group requests by these (``GET /videos/{id}/analysis``, never
a URL with an id or a presigned query in it); the emulator counts its requests under the same
names. Storage requests go to whatever presigned URL the API hands out, so their templates name
the operation (``POST /storage``) rather than a real path.
"""

from __future__ import annotations

from typing import Final

TOKEN: Final = "POST /oauth2/token"  # noqa: S105 - a route name, not a secret
CREATE_VIDEO: Final = "POST /videos"
GET_VIDEO: Final = "GET /videos/{id}"
UPDATE_VIDEO: Final = "PUT /videos/{id}"
GET_ANALYSIS: Final = "GET /videos/{id}/analysis"
GET_JOINT_DATA: Final = "GET /videos/{id}/j2p"
UPLOAD: Final = "POST /storage"
DOWNLOAD: Final = "GET /storage"
