"""``python -m faithmap``: the ``faithmap`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # importing the module (an API-reference build inspects every module) runs nothing
    sys.exit(main())
