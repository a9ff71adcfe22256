"""The ``vlprompt`` program: the LightningCLI subcommands (``fit``, ``validate``, ``test``, ``predict``;
:mod:`vlprompt.cli`) and the protocols above them (``suite``, ``report``; :mod:`vlprompt.eval`).

    vlprompt fit --config configs/learners/coop.yaml --config configs/data/toy/ToyShapes.yaml
    vlprompt suite base2novel --learner configs/learners/coop.yaml --data ...
    vlprompt report runs/suite
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

PROTOCOL_COMMANDS = ("suite", "report")


def main(args: Optional[Sequence[str]] = None) -> None:
    argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
    if argv and argv[0] in PROTOCOL_COMMANDS:
        from vlprompt.errors import report_user_errors
        from vlprompt.eval import report, suite

        with report_user_errors():
            (suite if argv[0] == "suite" else report).main(argv[1:])
        return
    from vlprompt.cli import main as lightning_main

    lightning_main(args)


if __name__ == "__main__":
    main()
