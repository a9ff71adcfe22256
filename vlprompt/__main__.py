"""``python -m vlprompt ...`` is the ``vlprompt`` program."""

from vlprompt.commands import main

main()
