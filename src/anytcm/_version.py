"""The package version, in one place.

hatch reads it from here when building (`[tool.hatch.version]` in pyproject.toml) and
`anytcm.__version__` re-exports it, so the two cannot drift apart. A module of its own, with
nothing else in it, because the build reads it as text and lower layers (plugins listing,
tracer scope) may import it without loading the package's public surface.
"""

__version__ = "0.1.0"
