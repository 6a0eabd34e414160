"""MkDocs hook: one reference page per entry point, generated at build time from the click commands.

The pages come from ``emotion_exp.cli`` through mkdocs-click, the same source as ``--help``, so a
stage added to the catalog gets its page and its nav entry with no file to write here.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from mkdocs.structure.files import File, Files

from emotion_exp.cli import cli

# mkdocs-click loads a command as an attribute of a module; the subcommands live in the group only.
COMMANDS_MODULE = "emotion_exp_commands"
REFERENCE_SECTION = "Reference"


def _attribute(name: str) -> str:
    return name.replace("-", "_")


def _page(name: str) -> str:
    return (
        "::: mkdocs-click\n"
        f"    :module: {COMMANDS_MODULE}\n"
        f"    :command: {_attribute(name)}\n"
        f"    :prog_name: emotion-exp {name}\n"
        "    :style: table\n\n"
        "## As an MLflow entry point\n\n"
        f"The entry point `{name}` of `MLproject` takes the same parameters under the same names and defaults: "
        f"`mlflow run . -e {name} -P name=value --env-manager local`.\n"
    )


def on_config(config: Any) -> Any:
    """Register the commands' module and list one reference page per command in the nav."""
    module = types.ModuleType(COMMANDS_MODULE)
    for name, command in cli.commands.items():
        setattr(module, _attribute(name), command)
    sys.modules[COMMANDS_MODULE] = module
    pages = [{f"emotion-exp {name}": f"reference/{name}.md"} for name in cli.commands]
    config["nav"].append({REFERENCE_SECTION: pages})
    return config


def on_files(files: Files, config: Any) -> Files:
    """Add the generated reference pages to the site."""
    for name in cli.commands:
        files.append(File.generated(config, f"reference/{name}.md", content=_page(name)))
    return files
