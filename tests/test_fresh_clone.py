"""benchmarks/fresh_clone.py reads the README's two set-up commands; here, from the README itself."""

import os
import sys
from pathlib import Path

from tests.conftest import REPO as ROOT
from tests.conftest import load_script


def load():
    return load_script("benchmarks/fresh_clone.py")


def test_the_readme_set_up_commands_install_then_train_and_install_then_test():
    commands = load().readme_commands((ROOT / "README.md").read_text())
    assert list(commands) == ["setup", "test"]
    assert "pip install -e ." in commands["setup"] and "ddpm train" in commands["setup"]
    assert 'pip install -e ".[test' in commands["test"] and "pytest" in commands["test"]
    assert all(c.startswith("python3 -m venv .venv") for c in commands.values())  # each from a fresh venv


def test_the_fresh_environment_leaves_this_virtual_environment_out(monkeypatch):
    monkeypatch.setenv("VIRTUAL_ENV", "/some/venv")
    monkeypatch.setenv("PATH", os.pathsep.join(["/some/venv/bin", str(Path(sys.executable).parent), "/usr/bin"]))
    env = load().clean_env()
    assert "VIRTUAL_ENV" not in env and env["PATH"] == "/usr/bin"
