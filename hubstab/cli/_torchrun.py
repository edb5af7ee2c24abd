"""``torch.distributed.run`` for ``hubstab eval --num-processes N``, quiet when stopped by a signal.

torchrun passes SIGINT/SIGTERM to the processes (which save what they finished and say so) and then
raises an exception with a traceback; here that ends as exit code 128 + signal instead.
"""

from __future__ import annotations

import sys


def main() -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun()
    except SignalException as err:
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
