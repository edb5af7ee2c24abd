"""``python -m hubstab.cli``: the same as the ``hubstab`` command (used by ``--num-processes``)."""

import sys

from hubstab.cli import main

sys.exit(main())
