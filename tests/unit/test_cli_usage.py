"""A usage error of ``sockact`` is one line on stderr naming what is wrong, and exit 2:
no usage block before it (scripts and people read the last line, and a log keeps one)."""

from __future__ import annotations

import pytest

from sockact import cli, errors


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "sockact: error: the following arguments are required: COMMAND"),
        (["nope"], "sockact: error: argument COMMAND: invalid choice: 'nope'"),
        (["layout", "--nope"], "sockact: error: unrecognized arguments: --nope"),
        (
            ["verify"],
            "sockact verify: error: the following arguments are required: -i/--inventory",
        ),
        (
            ["rollout", "run", "--out", "x", "--every", "x", "--", "true"],
            "sockact rollout run: error: argument --every: 'x' is not a number of seconds",
        ),
    ],
)
def test_a_usage_error_is_one_line(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == errors.EXIT_BAD_INPUT
    assert err.count("\n") == 1, err
    assert err.startswith(says), err
    assert err.rstrip().endswith("--help)"), err
