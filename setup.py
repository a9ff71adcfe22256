"""Build hook (the metadata is in setup.cfg): the recipes in ``configs/``, at the top of the repository where users
look for them, are copied into the package as ``vlprompt/configs/``, so an installed vlprompt reads the same recipes
as a checkout (``vlprompt/recipes.py``)."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithRecipes(build_py):
    def run(self):
        super().run()
        source = Path(__file__).resolve().parent / "configs"
        target = Path(self.build_lib) / "vlprompt" / "configs"
        for path in sorted(source.rglob("*.yaml")):
            destination = target / path.relative_to(source)
            self.mkpath(str(destination.parent))
            self.copy_file(str(path), str(destination))


setup(cmdclass={"build_py": BuildWithRecipes})
