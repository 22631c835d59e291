"""Plug-in registries: every collector source, sink and actuator kind is added by one @register."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", bound=type)


class Registry(dict[str, T]):
    """kind -> class. Registering a kind twice is an error (two modules claiming one config name)."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, kind: str) -> Callable[[T], T]:
        def deco(cls: T) -> T:
            if kind in self:
                raise ValueError(f"{self.what} kind '{kind}' registered twice")
            setattr(cls, "kind", kind)  # noqa: B010 - T is any class; mypy cannot see the attribute
            self[kind] = cls
            return cls

        return deco
