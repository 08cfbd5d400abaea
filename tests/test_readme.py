"""The README's configuration table lists every setting, and nothing that is not one."""

from __future__ import annotations

import re
from pathlib import Path

from schema.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented():
    documented = set(re.findall(r"^\| `(VIDSEARCH_[A-Z0-9_]+)` \|", README, re.M))
    fields = {f"VIDSEARCH_{name.upper()}" for name in Settings.model_fields}
    assert documented == fields


def test_the_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    readme_command = re.search(r"## Test it\n\n```bash\n(.+)\n```", README).group(1)
    assert readme_command == "scripts/test.sh"
    assert ci.strip().splitlines()[-1] == f"exec {readme_command}"


def test_the_test_command_names_the_exact_apt_line_when_it_cannot_install(tmp_path):
    """Not root, Chromium and docker-compose missing: scripts/test.sh stops before installing anything and prints the
    one command to run."""
    import os
    import shutil
    import subprocess

    root = Path(__file__).resolve().parent.parent
    tools = tmp_path / "bin"  # a PATH with the shell and coreutils it needs, and neither Chromium nor docker-compose
    tools.mkdir()
    for tool in ("bash", "dirname", "id"):
        (tools / tool).symlink_to(shutil.which(tool))
    as_user = [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    proc = subprocess.run([*as_user, str(tools / "bash"), str(root / "scripts" / "test.sh")], capture_output=True,
                          text=True, env={"PATH": str(tools)}, timeout=60)
    assert proc.returncode == 2, proc.stderr
    # What the script looks for outside PATH is missing only where this machine lacks it.
    missing = " ".join(["chromium", "docker-compose"]
                       + ([] if list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) else ["postgresql"])
                       + ["festival"]
                       + ([] if Path("/usr/share/festival/voices/english/kal_diphone").is_dir()
                          else ["festvox-kallpc16k"])
                       + ([] if Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").is_file()
                          else ["fonts-dejavu-core"]))
    assert f"sudo apt-get update && sudo apt-get install -y --no-install-recommends {missing}\n" in proc.stderr
    assert not (tmp_path / ".venv").exists() and proc.stdout == ""
