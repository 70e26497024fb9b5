"""Same as the installed ``shrink`` command: ``python scripts/train.py fit --config CONFIG``."""

from lightning_modules.train.cli import main

if __name__ == "__main__":
    main()
