"""sharpcomp's measures and records inside a training loop of one's own.

* :class:`~sharpcomp.tracking.tracker.Tracker` (``sharpcomp.Tracker``): one call per step; at its cadence
  the switched-on measures in eval mode, appended to a run folder ``sharpcomp train`` would write;
* :mod:`sharpcomp.tracking.untouched`: what a checkpoint leaves of the training state (nothing);
* :mod:`sharpcomp.tracking.inputs`: the checks made before training starts, and the run's settings;
* :mod:`sharpcomp.tracking.lightning`: a Lightning callback built on the tracker (the optional ``lightning``
  extra; nothing else here imports it).
"""
