"""``python -m essence.cli`` (also under ``torchrun -m essence.cli``)."""

from essence.cli import main

main()
