"""The ``cepa`` command installed by the wheel: the same command line as the Rust binary."""

from __future__ import annotations

import signal
import sys

from . import _native


def main() -> None:
    # Ctrl-C ends the command at once, as it does the native binary (Python's own handler would
    # only set a flag that nothing reads while Rust runs).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.exit(_native.run_cli(["cepa", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
