"""Result records: an append-only folder of parts; readers never see a torn, doubled or missing
checkpoint while a run appends, drops rows, compacts or converts an older single file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pandas as pd
import pytest

from sharpcomp.figures.tables import find_result_files, load_results
from sharpcomp.results import records
from sharpcomp.results.columns import COLUMNS
from sharpcomp.results.records import METRICS_FILE, RunRecorder, read_metrics

IDENT = {"run_id": "r", "data": "d", "model": "mlp4", "lr": 0.1, "batch": 20, "seed": 0}


def _rows(it: int, sets=("train", "test"), **extra) -> list[dict]:
    return [{"iteration": it, "epoch": it / 10, "wall_time": 0.5 * it, "train_loss_running": 1.0 / (it + 1),
             "sample_set": s, "n_samples": 4, "sample_loss": 0.1 * it, "G": float(it) + k, "mls": 2.0 * it,
             "bounds_reason": "", **extra} for k, s in enumerate(sets)]


def _parts(run_dir) -> list[str]:
    return sorted(os.listdir(run_dir / METRICS_FILE))


def _legacy_write(run_dir, batches: list[list[dict]], statuses: list[str]) -> pd.DataFrame:
    """The records writer before parts (commit dac6e64): the whole file rewritten at each append."""
    frame = None
    for rows, status in zip(batches, statuses):
        new = pd.DataFrame([{**IDENT, **row} for row in rows])
        frame = new if frame is None else pd.concat([frame, new], ignore_index=True)
        frame["status"] = status
        ordered = [c for c in COLUMNS if c in frame.columns] + [c for c in frame.columns if c not in COLUMNS]
        for col in COLUMNS:
            if col not in frame.columns:
                frame[col] = None
                ordered.append(col)
        frame = frame[ordered]
        numeric = records.METRIC_COLUMNS + records.CHECKPOINT_COLUMNS[2:] + ("sample_loss",)
        for col in numeric + records.NETWORK_WIDE_COLUMNS:  # columns added since: numeric, missing = NaN
            frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
        run_dir.mkdir(parents=True, exist_ok=True)
        records.atomic_write_parquet(run_dir / METRICS_FILE, frame)
        frame = frame.drop(columns=["status"])
    return pd.read_parquet(run_dir / METRICS_FILE)


def _batches() -> tuple[list[list[dict]], list[str]]:
    """Checkpoints with every kind of row: flatness columns every other checkpoint, a whole-set
    evaluation every third, and a diverged row without sample columns at the end."""
    batches = []
    for it in range(0, 60, 10):
        rows = _rows(it, train_loss=0.3 if it % 30 == 0 else np.nan)
        if it % 20 == 0:
            rows[0]["hessian_trace"] = 3.0 + it
        batches.append(rows)
    batches.append([{"iteration": 60, "epoch": 6.0, "train_loss_running": np.nan, "train_loss": np.nan,
                     "sample_set": "train", "wall_time": 30.0}])
    return batches, ["running"] * (len(batches) - 1) + ["diverged"]


def test_records_equal_those_of_the_rewriting_writer(tmp_path):
    batches, statuses = _batches()
    legacy = _legacy_write(tmp_path / "old", batches, statuses)
    rec = RunRecorder(tmp_path / "new", IDENT)
    for rows, status in zip(batches, statuses):
        rec.append(rows, status=status)
    assert _parts(tmp_path / "new") == ["_status", "part-000000000.parquet"]  # compacted when it diverged
    pd.testing.assert_frame_equal(read_metrics(tmp_path / "new"), legacy)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "new" / METRICS_FILE), legacy)
    assert rec.rows == 13 and rec.last_iteration == 60 and len(rec.frame) == 13


def test_appends_write_one_part_each_and_never_read_back(tmp_path, monkeypatch):
    rec = RunRecorder(tmp_path, IDENT)
    rec.append(_rows(0))

    def no_reads(path):
        raise AssertionError(f"an append read {path}")

    monkeypatch.setattr(records, "_read_table", no_reads)
    for it in (200, 400, 600):
        rec.append(_rows(it))
    assert _parts(tmp_path) == ["_status"] + [f"part-{i:09d}.parquet" for i in (0, 200, 400, 600)]
    assert rec.rows == 8 and rec.last_iteration == 600
    monkeypatch.undo()
    frame = read_metrics(tmp_path)
    assert frame.iteration.tolist() == [0, 0, 200, 200, 400, 400, 600, 600]
    assert frame.G.tolist() == [0.0, 1.0, 200.0, 201.0, 400.0, 401.0, 600.0, 601.0]
    assert (frame.status == "running").all() and list(frame.columns[:len(COLUMNS)]) == list(COLUMNS)


def test_status_reads_back_and_the_end_compacts(tmp_path):
    rec = RunRecorder(tmp_path, IDENT)
    for it in range(0, 50, 10):
        rec.append(_rows(it))
    rec.set_status("failed")
    assert _parts(tmp_path) == ["_status", "part-000000000.parquet"]
    raw = pd.read_parquet(tmp_path / METRICS_FILE)
    assert (raw.status == "failed").all() and raw.iteration.tolist() == [i for i in range(0, 50, 10) for _ in "ab"]
    # a rerun extends the run: the old rows read as running again until it ends
    rec = RunRecorder(tmp_path, IDENT)
    assert rec.rows == 10 and rec.last_iteration == 40
    rec.append(_rows(50))
    assert (read_metrics(tmp_path).status == "running").all()
    assert _parts(tmp_path) == ["_status", "part-000000000.parquet", "part-000000050.parquet"]
    rec.append(_rows(60), status="finished")
    frame = read_metrics(tmp_path)
    assert (frame.status == "finished").all() and frame.iteration.tolist()[-4:] == [50, 50, 60, 60]
    assert _parts(tmp_path) == ["_status", "part-000000000.parquet"]
    with pytest.raises(ValueError, match="unknown status"):
        rec.set_status("done")


def test_set_status_of_an_ended_compacted_run_rewrites_nothing(tmp_path):
    rec = RunRecorder(tmp_path, IDENT)
    rec.append(_rows(0), status="finished")
    part = tmp_path / METRICS_FILE / "part-000000000.parquet"
    before = part.stat().st_ino
    RunRecorder(tmp_path, IDENT).set_status("finished")
    assert part.stat().st_ino == before
    RunRecorder(tmp_path, IDENT).set_status("diverged")
    assert part.stat().st_ino != before and (read_metrics(tmp_path).status == "diverged").all()


def test_truncate_after_drops_rows_past_the_resume_point(tmp_path):
    rec = RunRecorder(tmp_path, IDENT)
    for it in range(0, 50, 10):
        rec.append(_rows(it))
    rec = RunRecorder(tmp_path, IDENT)  # a resume
    rec.truncate_after(25)
    assert read_metrics(tmp_path).iteration.tolist() == [0, 0, 10, 10, 20, 20]
    assert rec.rows == 6 and rec.last_iteration == 20
    assert _parts(tmp_path) == ["_status"] + [f"part-{i:09d}.parquet" for i in (0, 10, 20)]
    rec.truncate_after(20)  # nothing past it: nothing written
    rec.append(_rows(30), status="finished")
    rec = RunRecorder(tmp_path, IDENT)
    rec.truncate_after(10)  # inside the compacted part
    frame = read_metrics(tmp_path)
    assert frame.iteration.tolist() == [0, 0, 10, 10] and (frame.status == "running").all()
    assert rec.rows == 4 and rec.last_iteration == 10
    rec.truncate_after(None)
    frame = read_metrics(tmp_path)
    assert len(frame) == 0 and set(COLUMNS) <= set(frame.columns)
    assert rec.rows == 0 and rec.last_iteration is None and len(rec.frame) == 0
    rec.append(_rows(0))
    assert read_metrics(tmp_path).iteration.tolist() == [0, 0]


def test_the_same_iteration_appended_twice_is_one_part(tmp_path):
    rec = RunRecorder(tmp_path, IDENT)
    rec.append(_rows(5, sets=("train",)))
    rec.append(_rows(5, sets=("test",)))
    assert _parts(tmp_path) == ["_status", "part-000000005.parquet"]
    assert read_metrics(tmp_path).sample_set.tolist() == ["train", "test"] and rec.rows == 2


def test_a_single_file_of_older_results_reads_and_converts(tmp_path):
    batches, statuses = _batches()
    run = tmp_path / "sweep" / "old"
    legacy = _legacy_write(run, batches[:3], ["running", "running", "finished"])
    pd.testing.assert_frame_equal(read_metrics(run), legacy)
    assert find_result_files([tmp_path]) == [(run / METRICS_FILE).resolve()]
    rec = RunRecorder(run, IDENT)  # a rerun of the old run converts it
    assert (run / METRICS_FILE).is_dir() and rec.rows == 6 and rec.last_iteration == 20
    pd.testing.assert_frame_equal(read_metrics(run), legacy)
    rec.append(batches[3], status="finished")
    frame = read_metrics(run)
    assert frame.iteration.tolist() == [0, 0, 10, 10, 20, 20, 30, 30] and (frame.status == "finished").all()
    assert not [p for p in run.iterdir() if p.name != METRICS_FILE]  # no leftovers of the swap


def test_figures_find_each_run_folder_once_and_no_part_as_a_run(tmp_path):
    for name, status in (("a", "finished"), ("b", "running")):
        rec = RunRecorder(tmp_path / "sweep" / name, {**IDENT, "run_id": name})
        for it in range(0, 30, 10):
            rec.append(_rows(it))
        rec.set_status(status)
    _legacy_write(tmp_path / "sweep" / "c", _batches()[0][:2], ["running", "finished"])
    found = find_result_files([tmp_path, tmp_path / "sweep" / "a", tmp_path / "sweep" / "b" / METRICS_FILE])
    assert found == [(tmp_path / "sweep" / n / METRICS_FILE).resolve() for n in "abc"]
    frame, notes = load_results([tmp_path])
    assert notes == [] and frame.groupby("run_id").size().to_dict() == {"a": 6, "b": 6, "r": 4}
    assert frame.groupby("run_id").status.first().to_dict() == {"a": "finished", "b": "running", "r": "finished"}


def test_compaction_without_an_atomic_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "exchange", lambda a, b: False)
    rec = RunRecorder(tmp_path, IDENT)
    for it in range(3):
        rec.append(_rows(it))
    rec.set_status("finished")
    assert _parts(tmp_path) == ["_status", "part-000000000.parquet"] and os.listdir(tmp_path) == [METRICS_FILE]
    assert read_metrics(tmp_path).iteration.tolist() == [0, 0, 1, 1, 2, 2]


def test_a_kill_between_the_two_renames_is_recovered(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "exchange", lambda a, b: False)
    rec = RunRecorder(tmp_path, IDENT)
    for it in range(3):
        rec.append(_rows(it))
    real_rename, calls = os.rename, []

    def killed_at_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies with the old folder moved away, the new one aside
        real_rename(src, dst)

    monkeypatch.setattr(records.os, "rename", killed_at_second)
    with pytest.raises(KeyboardInterrupt):
        rec.set_status("finished")
    monkeypatch.setattr(records.os, "rename", real_rename)
    assert not (tmp_path / METRICS_FILE).exists()
    rec = RunRecorder(tmp_path, IDENT)
    assert os.listdir(tmp_path) == [METRICS_FILE] and rec.rows == 6
    frame = read_metrics(tmp_path)
    assert frame.iteration.tolist() == [0, 0, 1, 1, 2, 2] and (frame.status == "finished").all()


def _check_reader(run_dir, writer_done: threading.Event, errors: list) -> int:
    reads = 0
    while not writer_done.is_set() or reads < 5:
        try:
            frame = read_metrics(run_dir)
            its = frame.iteration.tolist()
            assert its == [i for i in range(len(its) // 2) for _ in "ab"], its  # whole checkpoints, each once
            np.testing.assert_array_equal(frame.G.to_numpy()[::2], frame.iteration.to_numpy(dtype=float)[::2])
        except Exception as exc:  # noqa: BLE001 - any failure is the bug
            errors.append(repr(exc))
        reads += 1
    return reads


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_reading_while_a_run_appends_truncates_and_compacts_never_fails(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(records, "exchange", lambda a, b: False)
    recorder = RunRecorder(tmp_path, IDENT)
    recorder.append(_rows(0))
    done, errors = threading.Event(), []

    def writer():
        try:
            for it in range(1, 45):
                recorder.append(_rows(it))
                if it % 20 == 0:
                    recorder.set_status("finished")  # compaction, then more appends after it
                    recorder.truncate_after(it - 3)  # a resume: parts and the compacted part shrink
                    recorder.append(_rows(it - 2))
                    recorder.append(_rows(it - 1))
                    recorder.append(_rows(it))
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        reads = _check_reader(tmp_path, done, errors)
    finally:
        thread.join()
    assert not errors, errors[:3]
    assert reads >= 5
    recorder.set_status("finished")
    final = read_metrics(tmp_path)
    assert final.iteration.tolist() == [i for i in range(45) for _ in "ab"] and (final.status == "finished").all()


KILLED_WRITER = textwrap.dedent("""
    import sys
    from sharpcomp.results.records import RunRecorder
    rec = RunRecorder(sys.argv[1], {"run_id": "r"})
    it = 0 if rec.last_iteration is None else rec.last_iteration + 1
    print("ready", flush=True)
    while True:
        rec.append([{"iteration": it, "sample_set": s, "G": float(it)} for s in ("train", "test")],
                   status="finished" if it % 7 == 6 else "running")
        it += 1
""")


def test_a_killed_writer_leaves_every_completed_checkpoint_and_resumes(tmp_path):
    """SIGKILL a real process that appends (and compacts every 7th checkpoint) at random moments;
    every completed checkpoint reads back, each once, and the next process goes on from there."""
    rng = np.random.default_rng(0)
    last = -1
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.2, 0.5)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        frame = read_metrics(tmp_path)
        its = frame.iteration.tolist()
        assert its == [i for i in range(len(its) // 2) for _ in "ab"] and its[-1] > last
        assert frame.sample_set.tolist() == ["train", "test"] * (len(its) // 2)
        last = its[-1]
    rec = RunRecorder(tmp_path, {"run_id": "r"})
    rec.set_status("finished")
    assert rec.rows == 2 * (last + 1) and _parts(tmp_path) == ["_status", "part-000000000.parquet"]
    assert not [p for p in tmp_path.iterdir() if p.name != METRICS_FILE]


def test_a_damaged_part_is_one_record_error_and_figures_skip_the_run(tmp_path):
    rec = RunRecorder(tmp_path / "bad", IDENT)
    rec.append(_rows(0))
    (tmp_path / "bad" / METRICS_FILE / "part-000000010.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(records.RecordError, match="cannot read results file"):
        read_metrics(tmp_path / "bad")
    RunRecorder(tmp_path / "good", {**IDENT, "run_id": "good"}).append(_rows(0), status="finished")
    frame, notes = load_results([tmp_path])
    assert set(frame.run_id) == {"good"} and len(notes) == 1 and "bad" in notes[0]
    with pytest.raises(records.RecordError, match="no results file"):
        read_metrics(tmp_path / "missing")


def test_results_written_before_the_network_wide_columns_read_them_as_missing(tmp_path):
    from sharpcomp.figures.tables import prepare

    old_columns = [c for c in COLUMNS if c not in records.NETWORK_WIDE_COLUMNS and c != "network_wide_reason"]
    frame = records.tidy(pd.DataFrame([{**IDENT, **row} for row in _rows(0) + _rows(10)]))[old_columns]
    (tmp_path / "run" / METRICS_FILE).mkdir(parents=True)  # a run folder of parts
    frame.to_parquet(tmp_path / "run" / METRICS_FILE / records.part_name(10))
    got = read_metrics(tmp_path / "run")
    assert set(COLUMNS) <= set(got.columns) and len(got) == len(frame)
    assert got[list(records.NETWORK_WIDE_COLUMNS)].isna().all().all()
    assert got.G.tolist() == frame.G.tolist()
    (tmp_path / "single").mkdir()  # a single-file results file of older runs: the figures' tables add them
    frame.to_parquet(tmp_path / "single" / METRICS_FILE)
    for table in (prepare(got), prepare(read_metrics(tmp_path / "single"))):
        assert table["nmls"].isna().all() and table["G"].notna().all()
