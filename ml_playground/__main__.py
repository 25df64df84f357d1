import sys

from ml_playground.cli import main

sys.exit(main())
