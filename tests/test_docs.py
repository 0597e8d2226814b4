"""The docs stay true: the CLI reference matches the Typer app, and the site builds strictly."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_cli_reference_is_up_to_date(tmp_path) -> None:
    typer = Path(sys.executable).with_name("typer")
    out = tmp_path / "cli.md"
    cmd = [str(typer), "comptlib.cli", "utils", "docs", "--name", "comptlib", "--title", "CLI reference"]
    subprocess.run([*cmd, "--output", str(out)], check=True, capture_output=True)
    assert out.read_text() == (DOCS / "cli.md").read_text(), (
        "docs/cli.md is stale: regenerate it with " + " ".join(cmd[1:]) + " --output docs/cli.md"
    )


def test_site_builds_strictly(tmp_path) -> None:
    """``mkdocs build --strict``: a broken link, a missing nav page or a bad docstring reference fails."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env["NO_MKDOCS_2_WARNING"] = "1"
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml")]
    result = subprocess.run([*cmd, "--site-dir", str(tmp_path / "site")], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_config_reference_is_the_generated_template() -> None:
    """docs/config.md quotes ``comptlib config`` as it is today: the TOML schema comes from the declarations."""
    from comptlib.config import toml_template

    assert "```toml\n" + toml_template() + "```" in (DOCS / "config.md").read_text(), (
        "docs/config.md is stale: replace its toml block with the output of `comptlib config`"
    )
