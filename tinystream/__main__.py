"""``python -m tinystream MODULE:ATTR [options]``."""

import sys

from .cli import main

sys.exit(main(prog="python -m tinystream"))
