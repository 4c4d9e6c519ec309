"""Entry point neko runs to list a plugin's entries without starting it: `python -m plugin.describe`."""

import sys

from plugin._runtime.describe import main

if __name__ == "__main__":
    sys.exit(main())
