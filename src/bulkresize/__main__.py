"""``python -m bulkresize``: the same as the ``bulkresize`` command."""

from bulkresize.cli import main

main()
