"""Configuration of the CLI: credentials from the environment, the token cache, the session."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .._auth import FileTokenStore
from .._payloads import resolve_fields
from .._session import GuruSession
from ._constants import EMULATOR_POLLS, PROG, log


class UsageError(Exception):
    """Bad input found by the CLI itself (exit status 2)."""


# -- configuration ---------------------------------------------------------------------------


def token_cache_path() -> Path:
    """Where the CLI keeps its access token between invocations.

    ``$GURU_ASYNC_CACHE_DIR/tokens.json`` when set, else ``$XDG_CACHE_HOME/guru-async/``,
    else ``~/.cache/guru-async/`` (``%LOCALAPPDATA%\\guru-async\\`` on Windows).
    """
    folder = os.environ.get("GURU_ASYNC_CACHE_DIR")
    if folder:
        return Path(folder).expanduser() / "tokens.json"
    base = os.environ.get("XDG_CACHE_HOME")
    if not base and os.name == "nt":
        base = os.environ.get("LOCALAPPDATA")
    return Path(base or "~/.cache").expanduser() / "guru-async" / "tokens.json"


def credentials() -> tuple[str, str]:
    """The client id and secret from the environment, or a UsageError naming what is missing."""
    client_id = os.environ.get("GURU_CLIENT_ID", "")
    client_secret = os.environ.get("GURU_CLIENT_SECRET", "")
    missing = [
        name
        for name, value in (("GURU_CLIENT_ID", client_id), ("GURU_CLIENT_SECRET", client_secret))
        if not value
    ]
    if missing:
        raise UsageError(
            f"missing credentials: set {' and '.join(missing)} in the environment (the CLI "
            "takes credentials only from there, never from flags); to try it offline, add "
            f"--emulator or run '{PROG} demo'"
        )
    return client_id, client_secret


@contextlib.asynccontextmanager
async def open_session(args: argparse.Namespace) -> AsyncIterator[GuruSession]:
    """The session a command runs with: against the API, or an embedded emulator."""
    if args.emulator:
        from ..testing import GuruEmulator

        async with (
            GuruEmulator(analysis_delay=1.0) as emu,
            emu.session(poll_policy=EMULATOR_POLLS) as guru,
        ):
            log.debug("embedded emulator at %s", emu.base_url)
            yield guru
        return
    client_id, client_secret = credentials()
    async with GuruSession(
        client_id,
        client_secret,
        base_url=args.base_url,
        token_store=FileTokenStore(token_cache_path()),
    ) as guru:
        yield guru


def video_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The create-video fields shared by upload and batch, validated before any request."""
    return resolve_fields(
        domain=args.domain, activity=args.activity, rep_count=args.rep_count, source=args.source
    ).as_dict()
