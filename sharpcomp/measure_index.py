"""Every built-in measure's declaration as plain data, for the modules that do without torch: the settings,
the results schema, the figures and the package's public names.

``measure_index.json`` beside this module is generated from the measure modules by
``python -m sharpcomp.measures.publish`` (do not edit it; a test fails when it is stale).

Per measure: ``family``, ``cadence``, ``key`` (its config key), ``stochastic``, ``summary``, ``aliases``
(earlier config keys), ``id_key`` and ``in_every_id`` (how it enters run ids), ``columns`` ([name, kind,
role, the value column it belongs to]), ``column_aliases`` (earlier column names), ``reparam`` (expected
verdicts under the ReLU rescaling), ``defaults`` and ``function`` (its public function and its module).
"""

import json
from importlib.resources import files

MEASURES: dict[str, dict] = json.loads(files(__package__).joinpath("measure_index.json").read_text(encoding="utf-8"))
