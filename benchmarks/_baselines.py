"""The hand-written clients the figures compare guru_async against.

- ``reference_create`` / ``reference_upload``: the Python example of guru-api.md, unchanged but
  for the base URL (``requests``; it reads the whole file into the request body).
- ``raw_*``: the same requests written by hand with raw aiohttp: what a careful developer would
  write without the SDK, and the ceiling for this HTTP stack.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks._harness import Endpoints

# requests is a benchmark-only dependency: where it is missing, the figures that need it skip.
requests: Any = None
with contextlib.suppress(ImportError):
    requests = importlib.import_module("requests")

# The metadata every client sends to Create Video, as in the reference example.
DOMAIN, ACTIVITY, REP_COUNT = "weightlifting", "squat", 1


def create_body(path: Path) -> dict[str, Any]:
    """The Create Video JSON body for ``path``."""
    return {
        "filename": path.name,
        "size": path.stat().st_size,
        "domain": DOMAIN,
        "activity": ACTIVITY,
        "repCount": REP_COUNT,
    }


def token_form(endpoints: Endpoints) -> dict[str, str]:
    """The client-credentials form of the token request."""
    return {
        "grant_type": "client_credentials",
        "client_id": endpoints.client_id,
        "client_secret": endpoints.client_secret,
        "scope": "https://api.getguru.fitness/default",
    }


# -- the reference example (requests) ----------------------------------------------------------


def require_requests() -> Any:
    """The requests module, or an error that says how to get it."""
    if requests is None:
        raise RuntimeError("the requests baseline needs 'requests' installed")
    return requests


def reference_token(endpoints: Endpoints) -> str:
    """A token fetched with requests, as the reference's authentication section describes."""
    resp = require_requests().post(endpoints.token_url, data=token_form(endpoints), timeout=60)
    resp.raise_for_status()
    token: str = resp.json()["access_token"]
    return token


def reference_create(
    base_url: str, video_path: str, access_token: str, domain: str, activity: str, rep_count: int
) -> Any:
    """``create()`` from guru-api.md, with the base URL as a parameter."""
    return require_requests().post(
        f"{base_url}/videos",
        json={
            "filename": os.path.basename(video_path),
            "size": os.path.getsize(video_path),
            "domain": domain,
            "activity": activity,
            "repCount": rep_count,
        },
        headers={"Content-Type": "application/json", "Authorization": access_token},
    )


def reference_upload(video_path: str, create_response: Any) -> Any:
    """``upload()`` from guru-api.md."""
    body = create_response.json()
    url = body["url"]
    fields = body["fields"]

    with open(video_path, "rb") as file:
        return require_requests().post(url, data=fields, files={"file": file})


def reference_upload_video(endpoints: Endpoints, video_path: str, access_token: str) -> None:
    """The reference's create-then-upload, failing loudly on an error status."""
    created = reference_create(
        endpoints.base_url, video_path, access_token, DOMAIN, ACTIVITY, REP_COUNT
    )
    created.raise_for_status()
    uploaded = reference_upload(video_path, created)
    uploaded.raise_for_status()


# -- raw aiohttp -------------------------------------------------------------------------------


async def raw_token(http: aiohttp.ClientSession, endpoints: Endpoints) -> str:
    """Fetch a token with one form POST."""
    async with http.post(endpoints.token_url, data=token_form(endpoints)) as resp:
        resp.raise_for_status()
        token: str = (await resp.json())["access_token"]
        return token


async def raw_create(
    http: aiohttp.ClientSession, endpoints: Endpoints, token: str, path: Path
) -> dict[str, Any]:
    """Create Video; returns ``{"id", "url", "fields"}``."""
    async with http.post(
        f"{endpoints.base_url}/videos", json=create_body(path), headers={"Authorization": token}
    ) as resp:
        resp.raise_for_status()
        created: dict[str, Any] = json.loads(await resp.read())
        return created


async def raw_upload(http: aiohttp.ClientSession, created: dict[str, Any], path: Path) -> None:
    """The presigned POST with aiohttp's FormData: fields first, then the file.

    From aiohttp 3.12 on, a FormData whose parts all know their size (a real file does) is sent
    with an exact Content-Length, not chunked; the emulator answers 411 to chunked uploads, so
    a regression here fails loudly rather than measuring the wrong thing.
    """
    form = aiohttp.FormData()
    for name, value in created["fields"].items():
        form.add_field(name, value)
    with path.open("rb") as file:
        form.add_field("file", file, filename=path.name, content_type="video/mp4")
        async with http.post(created["url"], data=form) as resp:
            resp.raise_for_status()


async def raw_get_json(http: aiohttp.ClientSession, url: str, token: str) -> Any:
    """GET an API URL and parse the JSON body with the standard library."""
    async with http.get(url, headers={"Authorization": token}) as resp:
        resp.raise_for_status()
        return json.loads(await resp.read())
