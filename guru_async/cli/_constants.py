"""Exit codes and settings shared by the CLI's modules."""

from __future__ import annotations

import logging
from typing import Final

from .._polling import PollPolicy

PROG: Final = "guru-async"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130  # 128 + SIGINT, as a shell reports Ctrl-C
EXIT_TERMINATED: Final = 143  # 128 + SIGTERM

VIDEO_SUFFIXES: Final = frozenset(
    {".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".3gp", ".wmv"}
)
# The embedded emulator analyses in about a second, so poll it far more often than the API.
EMULATOR_POLLS: Final = PollPolicy(interval=0.2, max_interval=0.5)
# At most this many analyses per rep in a table cell; the rest are counted.
TABLE_REP_VALUES: Final = 6

log = logging.getLogger("guru_async.cli")
