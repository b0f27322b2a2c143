"""``python -m frontends.cli``: the same as the ``privacy-bridge`` command."""

import sys

from frontends.cli import main

sys.exit(main())
