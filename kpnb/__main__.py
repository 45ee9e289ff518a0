import sys

from kpnb.cli import main

sys.exit(main())
