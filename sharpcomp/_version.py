"""The package's version, kept apart from ``sharpcomp/__init__.py`` so that the modules below the public API
(a run's recorded versions, ``sharpcomp --version``) read it without importing upward."""

__version__ = "0.1.0"
