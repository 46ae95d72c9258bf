"""``python -m bench NAME``: see :mod:`bench`."""

import sys

from . import main

sys.exit(main())
