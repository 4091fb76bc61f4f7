"""Where the suite's files are: the repository root, the helper scripts and the stored fixtures."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SCRIPTS = TESTS / "scripts"
FIXTURES = TESTS / "fixtures"
#: The tiny recipe file the training tests run with ``kdet train PATH``.
TINY_RECIPE = str(SCRIPTS / "tiny_recipe.py")
