"""``python -m lusifer.train`` = ``lusifer-train``."""

from lusifer.train.cli import main

main()
