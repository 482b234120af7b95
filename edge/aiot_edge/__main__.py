"""`python -m aiot_edge ...` is `aiot-edge ...`."""

import sys

from .cli import main

if __name__ == "__main__":  # importing this module (as the boundary test does) must not run the CLI
    sys.exit(main())
