"""`python -m tools.bench ARGS`: `tickwire bench ARGS` alone."""

import sys

from tools.bench import main

sys.exit(main())
