import sys

from streamloop.cli import main

sys.exit(main())
