import sys

from weightslabd.cli import main

sys.exit(main())
