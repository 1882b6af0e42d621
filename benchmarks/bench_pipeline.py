"""The side-by-side benchmark; the same program as ``mplog bench`` (see mplog/_bench.py).

    python benchmarks/bench_pipeline.py [--quick] [--out FILE.md] [--plot FILE.png] [...]

Kept so that the commands in docs/benchmarks.md from before ``mplog bench`` still work;
``--help`` lists the options.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mplog._cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
