"""``python -m cepa``: the ``cepa`` command."""

from ._cli import main

main()
