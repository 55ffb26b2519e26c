"""``python -m otpgate.cli``: the same as the ``otpgate`` console script."""

import sys

from otpgate.cli import main

if __name__ == "__main__":
    sys.exit(main())
