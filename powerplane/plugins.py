"""Plug-in registries, one way for every kind of plug-in: Python entry points.

A collector source, sink or actuator is a class in its own folder (module, README.md, sample.toml) and
is registered once, by one line in pyproject.toml under `[project.entry-points."powerplane.<group>"]`,
whose name is the `kind` a config table names. The class states the same `kind`; loading checks both
agree. Entry points are how Python packages have always discovered plug-ins (pytest, flake8,
setuptools itself): a third party's package can add a kind without touching ours, and nothing here
imports the packages that provide the kinds, so no layer imports a higher one to find them.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=type)


class PluginError(ValueError):
    """An unknown kind, or an entry point that does not load the class it names."""


class Registry(Generic[T]):
    """kind -> class, read from the entry-point group `powerplane.<group>` when first asked."""

    def __init__(self, group: str, what: str, error: type[ValueError] = PluginError) -> None:
        self.group = f"powerplane.{group}"
        self.what = what
        self.error = error  # what for_table raises: the family's config error
        self._loaded: dict[str, T] = {}
        self._scanned: dict[str, EntryPoint] | None = None

    def _points(self) -> dict[str, EntryPoint]:
        # Scanning the installed distributions' metadata is file I/O: once per registry and process (a kind
        # registered later needs a reinstall and a restart anyway).
        if self._scanned is not None:
            return self._scanned
        points: dict[str, EntryPoint] = {}
        for ep in entry_points(group=self.group):
            if ep.name in points and points[ep.name].value != ep.value:
                raise PluginError(f"{self.what} kind '{ep.name}' registered twice: {points[ep.name].value} and "
                                  f"{ep.value}")
            points[ep.name] = ep
        self._scanned = points
        return points

    def kinds(self) -> list[str]:
        return sorted(self._points())

    def __contains__(self, kind: object) -> bool:
        return isinstance(kind, str) and kind in self._points()

    def get(self, kind: str) -> T:
        if kind in self._loaded:
            return self._loaded[kind]
        points = self._points()
        if kind not in points:
            known = ", ".join(sorted(points)) or (f"none: no '{self.group}' entry points; install powerplane "
                                                  "(pip install -e .) so its plug-ins are registered")
            raise PluginError(f"unknown {self.what} kind {kind!r} (known: {known})")
        cls: T = points[kind].load()
        if getattr(cls, "kind", None) != kind:
            raise PluginError(f"{self.what} entry point '{kind}' = {points[kind].value} loads a class whose kind "
                              f"is {getattr(cls, 'kind', None)!r}")
        self._loaded[kind] = cls
        return cls

    def for_table(self, options: Mapping[str, Any], path: str) -> T:
        """The class a config table's `kind` names; the family's error (`<path>.kind: ...`) when the kind
        is missing or unknown."""
        kind = options.get("kind")
        if kind is None:
            raise self.error(f"{path}.kind: missing (required; one of {', '.join(self.kinds())})")
        try:
            return self.get(str(kind))
        except PluginError as e:
            raise self.error(f"{path}.kind: {e}") from None
