"""The model commands' arguments: bad values are refused with a message, never trained on."""

import pytest

from squeezesam.backend.cli import build_parser


@pytest.mark.parametrize(
    "option", ["--object-view-p", "--crowd-p", "--rollout-p", "--interior-click-p"]
)
def test_train_base_refuses_a_share_outside_0_to_1(option, capsys):
    parser = build_parser()
    assert parser.parse_args(["train-base", option, "0.25"]).func
    for bad in ("1.5", "-0.1", "nan"):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(["train-base", option, bad])
        assert exit_.value.code == 2
        assert f"must be a share between 0 and 1, got {bad}" in capsys.readouterr().err


def test_train_base_refuses_a_negative_schedule_start(capsys):
    parser = build_parser()
    assert parser.parse_args(["train-base", "--deepen", "--schedule-start", "23400"]).deepen
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["train-base", "--schedule-start", "-5"])
    assert exit_.value.code == 2
    assert "must be 0 or more, got -5" in capsys.readouterr().err
