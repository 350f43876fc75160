"""Which user code acpsearch may run: the one place that decides whether a model factory is imported.

A model config names either a zoo network (always fine: acpsearch's own code) or a factory
``"package.module:function"``. Importing a module runs its code, so a factory is only imported when
the person running acpsearch allowed its module:

* the module of the spec's own ``model.factory`` (``submit`` / ``run``: the user wrote that spec),
* modules given with ``--allow-factory MODULE`` (repeatable or comma-separated) or the keyword
  ``allow_factories=[...]`` of the library functions,
* modules listed in ``$ACPSEARCH_ALLOW_FACTORIES`` (comma-separated).

An entry allows that module and its submodules (whole dotted components: ``mypkg`` allows
``mypkg.nets``, not ``mypkg2``). A checkpoint is data: the factory it names is never allowed by
the checkpoint itself, and a stored study never carries allowances (whoever can write the storage
could grant them). See docs/operations.md, "Trust model".
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from acpsearch.errors import CheckpointError, SpecError

ALLOW_ENV = "ACPSEARCH_ALLOW_FACTORIES"
ALLOW_HELP = (
    f"module whose model factories may be imported (repeatable or comma-separated; 'mypkg' also allows "
    f"'mypkg.nets'); also ${ALLOW_ENV}"
)

_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class FactoryNotAllowed(CheckpointError):
    """A model config names a factory whose module the user did not allow; nothing was imported."""

    def __init__(self, where: str, factory: str, module: str) -> None:
        self.where, self.factory, self.module = where, factory, module
        super().__init__(
            f"{where}: model.factory {factory!r} is not allowed: module {module!r} is imported only "
            f"if you allow it (--allow-factory {module}, or {ALLOW_ENV}={module})"
        )


def factory_module(factory: str) -> str:
    """'pkg.mod:fn' -> 'pkg.mod' (the part that import_module would run)."""
    return str(factory).split(":", 1)[0].strip()


def _parse(entries: Iterable[str], origin: str) -> tuple[str, ...]:
    out: list[str] = []
    for entry in entries:
        for part in str(entry).split(","):
            part = part.strip()
            if not part:
                continue
            if not _MODULE_RE.fullmatch(part):
                raise SpecError(f"{origin}: {part!r} is not a module name (give 'package.module', without ':function')")
            if part not in out:
                out.append(part)
    return tuple(out)


@dataclass(frozen=True)
class FactoryPolicy:
    """The modules whose factories may be imported (picklable: it travels to Ray workers)."""

    modules: tuple[str, ...] = ()
    # Directories searched for a factory's module before sys.path (the spec's model.path); where to
    # look, not what to trust: the module must still be allowed.
    paths: tuple[str, ...] = ()

    @classmethod
    def from_user(cls, allow: Iterable[str] | str | None = None, *, env: bool = True) -> FactoryPolicy:
        """The user's allow-list: `allow` (CLI option / keyword argument) plus $ACPSEARCH_ALLOW_FACTORIES."""
        if isinstance(allow, str):
            allow = [allow]
        mods = _parse(allow or (), "--allow-factory")
        if env and os.environ.get(ALLOW_ENV):
            mods += tuple(m for m in _parse([os.environ[ALLOW_ENV]], ALLOW_ENV) if m not in mods)
        return cls(mods)

    @classmethod
    def coerce(cls, allow: FactoryPolicy | Iterable[str] | str | None) -> FactoryPolicy:
        """A policy as given, or the user's allow-list built from names (None: the environment only)."""
        return allow if isinstance(allow, FactoryPolicy) else cls.from_user(allow)

    def allowing(self, *modules: str) -> FactoryPolicy:
        return FactoryPolicy(self.modules + tuple(m for m in modules if m and m not in self.modules), self.paths)

    def searching(self, *paths: str | None) -> FactoryPolicy:
        """The same allow-list, also looking for factory modules in `paths` (directories)."""
        return FactoryPolicy(self.modules, self.paths + tuple(str(p) for p in paths if p and str(p) not in self.paths))

    def with_spec(self, spec: Any) -> FactoryPolicy:
        """Also allow the module of the spec's own model.factory (the user wrote that spec)."""
        factory = getattr(getattr(spec, "model", None), "factory", None)
        return self.allowing(factory_module(factory)) if factory else self

    def allows(self, factory_or_module: str) -> bool:
        mod = factory_module(factory_or_module)
        return any(mod == m or mod.startswith(m + ".") for m in self.modules)

    def check(self, factory: str, where: str) -> None:
        """Raise FactoryNotAllowed (before anything is imported) unless the factory's module is allowed."""
        if not self.allows(factory):
            raise FactoryNotAllowed(where, str(factory), factory_module(factory))
