"""`python -m api` starts the server, like `robopt serve`."""

import sys

from api.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
