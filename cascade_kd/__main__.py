import sys

from cascade_kd.cli.app import main

sys.exit(main())
