"""`python -m llamaforge.serve PATH`: the same as `llamaforge serve PATH`."""

import sys

from .cli import main

sys.exit(main())
