"""sharpcomp.results.kept_weights: which iterations a save_every keeps (arithmetic against enumeration), the
disk estimate, and the files: written compact, read back safely, refused when crafted, linked or foreign."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from sharpcomp.kept_schedule import KeptError, check_save_every, is_kept, kept_count, next_kept
from sharpcomp.results.kept_weights import (
    check_disk,
    keep_weights,
    kept_iterations,
    parse_iterations,
    read_weights,
    weights_path,
)
from sharpcomp.results.run_state import check_members
from sharpcomp.settings import ConfigError
from tests.problems import MLP_REGRESSION


def enumerated(save_every, steps: int) -> list[int]:
    """The kept iterations by their definition: 0, N, 2N, ... below steps, and steps; or the list."""
    if isinstance(save_every, tuple):
        return list(save_every)
    return sorted({*range(0, steps, save_every), steps})


@pytest.mark.parametrize("save_every,steps", [(1, 7), (3, 10), (5, 10), (10, 10), (25, 10), ((0, 4, 9), 9),
                                              ((6,), 20)])
def test_kept_iterations_are_counted_and_found_without_enumerating(save_every, steps):
    want = enumerated(save_every, steps)
    assert kept_count(save_every, steps) == len(want)
    assert [it for it in range(steps + 1) if is_kept(save_every, steps, it)] == want
    walked, it = [], -1
    while (it := next_kept(save_every, steps, it)) is not None:
        walked.append(it)
    assert walked == want


def test_save_every_checks():
    assert check_save_every(None, 10) is None and check_save_every(5, 10) == 5
    assert check_save_every([8, 0, 8, 3], 10) == (0, 3, 8)
    for bad, message in ((0, "positive"), (-2, "positive"), ([0, 11], r"iteration 11, outside the run's \[0, 10\]"),
                         ("often", "must be null"), ([], "must be null"), (True, "must be null")):
        with pytest.raises(KeptError, match=message):
            check_save_every(bad, 10)
    assert kept_count(10, 500_000_000) == 50_000_001  # a huge schedule, counted in O(1)


def test_the_disk_estimate_refuses_what_it_would_not_fit():
    model = MLP_REGRESSION.model()
    floats = sum(p.numel() for p in model.parameters())
    check_disk(1, 100, model, save_max_gb=101 * 4 * floats / 1e9)
    with pytest.raises(KeptError) as err:
        check_disk(1, 100, model, save_max_gb=100 * 4 * floats / 1e9)
    assert "would keep 101 copies" in str(err.value) and "set save_max_gb=" in str(err.value)


def test_files_are_compact_and_read_back(tmp_path):
    model = MLP_REGRESSION.model(torch.float64)
    state = model.state_dict()
    path = keep_weights(tmp_path, "run-a", 40, state)
    assert path == weights_path(tmp_path, 40) and kept_iterations(tmp_path) == [40]
    back = read_weights(tmp_path, 40, "run-a")
    assert all(v.dtype == torch.float32 for v in back.values())
    for k, v in state.items():
        assert torch.equal(back[k], v.to(torch.float32))
    raw = torch.load(path, weights_only=True)  # plain containers and tensors only
    assert raw["run_id"] == "run-a" and raw["iteration"] == 40
    with pytest.raises(KeptError, match="weights of another run"):
        read_weights(tmp_path, 40, "run-b")
    with pytest.raises(KeptError, match=r"no weights kept at iteration 7 .*kept: 40"):
        read_weights(tmp_path, 7)
    assert parse_iterations("all", [0, 40]) == [0, 40] and parse_iterations("5,0", [0]) == [5, 0]
    for bad in ("", "a,b", "-3"):
        with pytest.raises(KeptError):
            parse_iterations(bad, [0])


def test_crafted_linked_and_misnamed_files_are_refused(tmp_path):
    model = MLP_REGRESSION.model()
    keep_weights(tmp_path, "r", 0, model.state_dict())
    marker = tmp_path / "PWNED"
    target = str(weights_path(tmp_path, 5))
    code = ("import torch\nclass Evil:\n"
            f"    def __reduce__(self): return (eval, ({f'open({str(marker)!r}, chr(119))'!r},))\n"
            f"torch.save({{'run_id': 'r', 'iteration': 5, 'model_state': Evil()}}, {target!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(KeptError, match="nothing in it was run"):
        read_weights(tmp_path, 5, "r")
    assert not marker.exists()
    os.symlink(weights_path(tmp_path, 0), weights_path(tmp_path, 9))
    with pytest.raises(KeptError, match="symbolic link"):
        read_weights(tmp_path, 9, "r")
    assert kept_iterations(tmp_path) == [0, 5]  # the link is not a kept file
    os.replace(weights_path(tmp_path, 0), weights_path(tmp_path, 3))
    with pytest.raises(KeptError, match="holds iteration 0, not 3"):
        read_weights(tmp_path, 3, "r")
    with pytest.raises(Exception, match="symbolic link"):
        keep_weights(tmp_path, "r", 9, model.state_dict())  # never written through a link


def test_a_linked_weights_folder_refuses_the_run_folder(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "run" / "weights")
    with pytest.raises(ConfigError, match="weights"):
        check_members(tmp_path / "run")
    assert kept_iterations(tmp_path / "run") == []
    with pytest.raises(Exception, match="symbolic link"):
        keep_weights(tmp_path / "run", "r", 0, MLP_REGRESSION.model().state_dict())
    assert not any((tmp_path / "elsewhere").iterdir())
