"""Build hook: copy the shipped repository files (gateway/shipped.py) into the wheel.

Project metadata lives in pyproject.toml; this file only adds the copy, so the files stay
single in git (configs/, systemd/) and `plp-gateway init` finds them in an installed wheel.
"""

import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

_HERE = Path(__file__).resolve().parent
_SHIPPED = runpy.run_path(str(_HERE / "gateway" / "shipped.py"))


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "gateway" / _SHIPPED["PACKAGE_DIR"]
        for original in _SHIPPED["SHIPPED"].values():
            dest = target / original
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_HERE / original, dest)


setup(cmdclass={"build_py": BuildWithShippedFiles})
