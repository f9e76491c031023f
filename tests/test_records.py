"""Result records: readers never see a torn file while a run rewrites it."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd

from sharpcomp.records import RunRecorder, read_metrics


def test_reading_while_a_run_appends_never_fails(tmp_path):
    recorder = RunRecorder(tmp_path, {"run_id": "r", "lr": 0.1})
    recorder.append([{"iteration": 0, "sample_set": "train", "G": 0.0}])
    stop, errors = threading.Event(), []

    def writer():
        it = 0
        while not stop.is_set():
            it += 1
            recorder.append([{"iteration": it, "sample_set": "train", "G": float(it)}])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(400):
            try:
                frame = read_metrics(tmp_path)
                assert frame.iteration.tolist() == list(range(len(frame)))  # whole checkpoints, in order
            except Exception as exc:  # noqa: BLE001 - any failure is the bug
                errors.append(repr(exc))
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    final = read_metrics(tmp_path)
    np.testing.assert_array_equal(final.G.to_numpy(), final.iteration.to_numpy(dtype=float))
    assert isinstance(final, pd.DataFrame) and (final.status == "running").all()
