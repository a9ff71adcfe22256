"""Where the shipped recipes are: ``configs/`` (learner YAMLs, recipes over them, CLIP and data configs).

In a checkout they sit at the top of the repository, where users look for them; an installed vlprompt carries the
same files inside the package (``vlprompt/configs/``, copied there when the wheel is built: ``setup.py``). Paths
written as in the README (``configs/learners/coop.yaml``) that do not exist where the command runs are read from
there, so an installed vlprompt behaves as a checkout: ``--model coop``, ``--config configs/...``, and the suite's
default data sets find the same recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

_PACKAGE = Path(__file__).resolve().parent
#: The recipes an installed vlprompt carries (absent in a checkout).
PACKAGED_CONFIGS = _PACKAGE / "configs"
#: The recipes of a checkout (or an editable install).
CHECKOUT_CONFIGS = _PACKAGE.parent / "configs"


def configs_root() -> Path:
    """The folder holding the shipped ``learners/``, ``recipes/``, ``clip/`` and ``data/`` configs."""
    return PACKAGED_CONFIGS if PACKAGED_CONFIGS.is_dir() else CHECKOUT_CONFIGS


def resolve_config(path: Union[str, Path]) -> Path:
    """``path`` itself when it exists; else, for a path written as the README writes them (``configs/<...>``, from
    anywhere), the shipped file of that name when there is one; else ``path`` unchanged (for the caller's own
    "does not exist" message)."""
    path = Path(path)
    if path.exists():
        return path
    parts = path.parts
    if "configs" in parts:
        last = len(parts) - 1 - parts[::-1].index("configs")
        shipped = configs_root().joinpath(*parts[last + 1:])
        if shipped.is_file():
            return shipped
    return path


def resolve_config_args(args: Sequence[str]) -> list[str]:
    """``args`` with the value of every ``--config``/``-c`` resolved by :func:`resolve_config`."""
    resolved, args = [], [str(arg) for arg in args]
    for index, arg in enumerate(args):
        if index > 0 and args[index - 1] in ("--config", "-c"):
            resolved.append(str(resolve_config(arg)))
        elif arg.startswith("--config="):
            resolved.append("--config=" + str(resolve_config(arg.split("=", 1)[1])))
        else:
            resolved.append(arg)
    return resolved
