import sys

from llamaforge.world.cli import main

sys.exit(main())
