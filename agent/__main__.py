"""`python -m agent` is `sandboxed-agent`."""

import sys

from .cli import main

sys.exit(main())
