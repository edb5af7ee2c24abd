"""``python -m hubstab`` (and ``accelerate launch -m hubstab eval ...``): the ``hubstab`` command."""

import sys

from hubstab.cli import main

sys.exit(main())
