"""Every `tfnas …` command line the README and the cluster guide show is one the CLI
accepts: its command exists and its options parse (a renamed option fails here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from tfnas_ray import cli

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", REPO / "docs" / "cluster.md", *sorted((REPO / "k8s").glob("*.yaml")), *sorted((REPO / "cluster").glob("*.yaml"))]


def documented_commands() -> list[tuple[str, str]]:
    """(document, command line) for each `tfnas` line in code or inline code."""
    found = []
    for document in DOCUMENTS:
        text = re.sub(r"\\\n[ \t]*", " ", document.read_text())  # a shell line continued with a backslash
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        candidates = re.findall(r"`([^`\n]*(?:\n[^`\n]*){0,3})`", prose)  # inline code, may wrap
        candidates += re.findall(r"^(?:    |#   |  entrypoint: )(.*)$", text, flags=re.M)  # code lines, YAML comments
        candidates += [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for line in block.splitlines()]
        for candidate in candidates:
            command = " ".join(candidate.split())
            start = re.search(r"(?:^|&& )(?:\.venv/bin/)?(tfnas .*)$", command)
            if start and "…" not in command and " / " not in command:
                found.append((document.name, start.group(1)))
    return sorted(set(found))


def parse(args: list[str]) -> None:
    group = typer.main.get_command(cli.app)
    name = args[0]
    command = group.get_command(group.make_context("tfnas", list(args)), name)
    assert command is not None, f"`tfnas {name}` is not a command"
    if len(args) == 1:
        return  # the command named in prose, without its arguments
    params = command.make_context(name, list(args[1:])).params
    if name == "submit":
        parse(params["command"])  # the command the cluster runs


def test_the_documents_show_commands():
    names = {line.split()[1] for _, line in documented_commands()}
    assert {"reproduce", "score", "correlate", "submit", "jobs", "logs", "train"} <= names


@pytest.mark.parametrize("document, line", documented_commands())
def test_a_documented_command_parses(document, line):
    parse(shlex.split(line)[1:])
