"""``python -m guru_async``: the ``guru-async`` command line."""

import sys

from guru_async.cli import main

if __name__ == "__main__":
    sys.exit(main())
