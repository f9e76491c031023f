"""Hydra's view of sharpcomp's launcher: this folder ships as ``hydra_plugins.sharpcomp_ensemble``
(pyproject maps it, as it maps ``conf/`` onto ``sharpcomp.conf``), the namespace where Hydra discovers
plugins. The launcher itself lives in :mod:`sharpcomp.engine.launcher`."""

import sharpcomp.engine.launcher as _launcher


class EnsembleLauncher(_launcher.EnsembleLauncher):
    __doc__ = _launcher.EnsembleLauncher.__doc__
