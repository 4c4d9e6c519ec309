"""Entry point neko runs for Python plugins: `python -m plugin.runner`."""

import sys

from plugin._runtime.runner import main

if __name__ == "__main__":
    sys.exit(main())
