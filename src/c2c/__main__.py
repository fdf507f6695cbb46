"""``python -m c2c``: same as the ``c2c`` command."""

from c2c.cli import main

main()
