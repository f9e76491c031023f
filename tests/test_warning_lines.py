"""Warnings on the command line: one line each, no source line; PyTorch's TorchScript deprecation notices
not shown; outside the command, Python's own display."""

from __future__ import annotations

import warnings

from sharpcomp import cli
from sharpcomp.warning_lines import drop_noise, one_line_warnings


def _warn_twice_from_a_library():
    warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`.",
                  FutureWarning, stacklevel=1)
    warnings.warn("compute_metrics: N = 300 outputs of fc1: 300 backward passes over 100 samples, about 12 s\n"
                  "second line", RuntimeWarning, stacklevel=1)


def test_one_line_each_and_noise_dropped(capsys):
    with one_line_warnings():
        _warn_twice_from_a_library()
    err = capsys.readouterr().err
    assert err == ("sharpcomp: warning: compute_metrics: N = 300 outputs of fc1: 300 backward passes over 100 "
                   "samples, about 12 s\n")


def test_the_command_line_shows_warnings_in_one_line(capsys, monkeypatch):
    def train(rest, multirun):
        _warn_twice_from_a_library()
        return 0

    monkeypatch.setattr(cli, "_train", train)
    assert cli.main(["train"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["sharpcomp: warning: compute_metrics: N = 300 outputs of fc1: 300 backward passes over 100 "
                   "samples, about 12 s"]
    # outside the command, warnings are Python's again
    assert warnings.showwarning.__module__ != "sharpcomp.warning_lines"


def test_warnings_collected_to_be_said_drop_the_noise_too():
    """reparam and runs collect every warning (``simplefilter("always")``) to say each once as a note:
    the TorchScript notice is not among them, the others are."""
    with one_line_warnings(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drop_noise()
        _warn_twice_from_a_library()
    assert [type(w.message) for w in caught] == [RuntimeWarning]
