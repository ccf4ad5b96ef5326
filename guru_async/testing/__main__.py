"""``python -m guru_async.testing``: run the emulator standalone."""

import sys

from guru_async.testing._cli import main

sys.exit(main())
