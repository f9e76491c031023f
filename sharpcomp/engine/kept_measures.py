"""A run's measures keep the settings they started with.

``metrics.flatness.<name>: {}`` means "the measure at its defaults", and a measure's defaults may change
between versions of sharpcomp, while the run id is computed from the config as written (so that every
run folder keeps its name and resumes). So a run's rows record each switched-on measure's settings in
full (:func:`publish`, in their ``settings`` JSON), and a resumed run computes its measures with the
settings its rows record (:func:`keep`), saying so in one line where those differ from what its config
means today: every row of a run is computed the same way.

Rows written before rows recorded every setting name only the settings the config gave; the others were
then at the measure's defaults of that time, declared as its ``earlier_defaults`` where they have changed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sharpcomp.measures.registry import Plan, canonical, plan, switchable
from sharpcomp.results.records import METRICS_FILE, RecordError, read_metrics
from sharpcomp.settings import Settings


def resolved(measure_plan: Plan) -> dict[str, dict[str, Any]]:
    """Each switched-on measure's settings in full, by measure name."""
    return {m.name: dataclasses.asdict(s) for m, s in measure_plan.entries}


def publish(settings_json: str, measure_plan: Plan) -> str:
    """A row's ``settings`` JSON with every switched-on built-in measure's settings written in full (under
    the key its run id uses); a measure of one's own keeps its entry as written (its ``_target_``)."""
    data = json.loads(settings_json)
    flat = data.get("metrics", {}).get("flatness")
    if not isinstance(flat, dict):
        return settings_json
    built_in = switchable()
    for m, s in measure_plan.entries:
        if built_in.get(m.name) is m:
            flat[m.id_key or m.name] = dataclasses.asdict(s)
    return json.dumps(data, sort_keys=True, default=str)


def recorded(run_dir: Path) -> dict[str, dict[str, Any]] | None:
    """The settings of each measure the rows in ``run_dir`` were computed with, by name (None: no rows, or
    rows that cannot be read, which the run's opening reports). Settings the rows do not name were at
    the measure's ``earlier_defaults`` where declared, else at its defaults."""
    try:
        frame = read_metrics(run_dir) if (Path(run_dir) / METRICS_FILE).exists() else None
    except (RecordError, OSError, ValueError):
        return None
    if frame is None or not len(frame) or "settings" not in frame.columns:
        return None
    try:
        flat = json.loads(str(frame["settings"].iloc[-1])).get("metrics", {}).get("flatness") or {}
    except (ValueError, AttributeError):
        return None
    known = switchable()
    out = {}
    for key, entry in flat.items():
        name = canonical(key)
        if name is None or not isinstance(entry, dict):
            continue
        m = known[name]
        out[name] = {**m.defaults(), **m.earlier_defaults, **entry}
    return out


def _changes(old: dict, new: dict) -> str:
    return ", ".join(f"{k}={json.dumps(old[k])}" for k in old if old[k] != new.get(k))


def keep(s: Settings, run_dir: Path) -> tuple[Settings, list[str]]:
    """``s`` with each switched-on measure set as the rows in ``run_dir`` record it, where that differs
    from what ``s`` resolves to today; and one line for each measure kept so."""
    before = recorded(run_dir)
    if not before:
        return s, []
    now = resolved(plan(s.metrics.flatness))
    kept, notes = dict(s.metrics.flatness), []
    for name, settings in now.items():
        old = before.get(name)
        if old is None or old == settings:
            continue
        try:
            plan({name: old})  # still valid settings of the measure
        except ValueError:
            continue
        kept[name] = old
        notes.append(f"sharpcomp: {run_dir}: metrics.flatness.{name} keeps the settings its rows were computed "
                     f"with ({_changes(old, settings)}; its settings now would be {_changes(settings, old)})")
    if not notes:
        return s, []
    return dataclasses.replace(s, metrics=dataclasses.replace(s.metrics, flatness=kept)), notes
