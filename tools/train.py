#!/usr/bin/env python
"""Same entry point as the ``vlprompt`` command: ``python tools/train.py fit --config ...``."""

from vlprompt.commands import main

if __name__ == "__main__":
    main()
