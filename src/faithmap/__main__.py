"""``python -m faithmap``: the ``faithmap`` command."""

import sys

from .cli import main

sys.exit(main())
