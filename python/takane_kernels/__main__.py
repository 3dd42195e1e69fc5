"""``python -m takane_kernels [demo | llm | lm] ...``: the programs live in
:mod:`takane_kernels.programs` (``programs.main`` dispatches)."""

import sys

from takane_kernels.programs.main import main

if __name__ == "__main__":
    sys.exit(main())
