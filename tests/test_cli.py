"""The CLI's shape: every subcommand has a description in its --help and takes --registry before or after it."""

import pytest

from cockpit import cli


def test_every_subcommand_help_has_its_description(capsys):
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # the subcommands argparse knows
    assert set(commands) == {"status", "resume", "launch", "stop", "report", "gpus"}
    for name in commands:
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        func = commands[name].get_default("func")
        first = " ".join(func.__doc__.split())[:40]
        assert f"usage: cockpit {name}" in out and first in " ".join(out.split()), name
        assert "--registry PATH" in out, name


def test_registry_before_or_after_the_subcommand(tmp_path):
    parser = cli.build_parser()
    assert parser.parse_args(["--registry", "a.toml", "status"]).registry == "a.toml"
    assert parser.parse_args(["status", "--registry", "b.toml"]).registry == "b.toml"
    assert parser.parse_args(["--registry", "a.toml", "status", "--registry", "b.toml"]).registry == "b.toml"
    assert parser.parse_args(["status"]).registry == "experiments.toml"
