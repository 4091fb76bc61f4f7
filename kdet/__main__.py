"""``python -m kdet``: the ``kdet`` command line (:mod:`kdet.cli`)."""

import sys

from kdet.cli import main

sys.exit(main())
