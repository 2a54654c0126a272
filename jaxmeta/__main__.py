"""``python -m jaxmeta ...``: the ``jaxmeta`` command without its console script."""

import sys

from jaxmeta.cli import main

sys.exit(main())
