"""``python -m shoal``: the command line."""

import sys

from shoal.cli import main

sys.exit(main())
