"""`python -m service.cli`: the same as the `stackone-connect` script."""

import sys

from service.cli.main import main

sys.exit(main())
