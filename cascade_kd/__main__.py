import sys

from cascade_kd.cli import main

sys.exit(main())
