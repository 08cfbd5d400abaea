"""The README's configuration table lists every setting, and nothing that is not one."""

from __future__ import annotations

import re
from pathlib import Path

from schema.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented():
    documented = set(re.findall(r"^\| `(VIDSEARCH_[A-Z_]+)` \|", README, re.M))
    fields = {f"VIDSEARCH_{name.upper()}" for name in Settings.model_fields}
    assert documented == fields


def test_the_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    readme_command = re.search(r"```bash\npip install -e \"\.\[test\]\" && (.+)\n```", README).group(1)
    assert ci.strip().splitlines()[-1] == readme_command
