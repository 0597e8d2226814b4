"""The CLI reference in docs/ is generated from the Typer app and must stay current."""

import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_cli_reference_is_up_to_date(tmp_path) -> None:
    typer = Path(sys.executable).with_name("typer")
    out = tmp_path / "cli.md"
    cmd = [str(typer), "comptlib.cli", "utils", "docs", "--name", "comptlib", "--title", "CLI reference"]
    subprocess.run([*cmd, "--output", str(out)], check=True, capture_output=True)
    assert out.read_text() == (DOCS / "cli.md").read_text(), (
        "docs/cli.md is stale: regenerate it with " + " ".join(cmd[1:]) + " --output docs/cli.md"
    )
