"""`python -m llmbatch.cli`: the `llmbatch` command."""

import sys

from llmbatch.cli.main import main

sys.exit(main())
