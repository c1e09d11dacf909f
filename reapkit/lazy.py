"""Names a package exports from its submodules, each imported on first use.

    >>> __all__, __getattr__, __dir__ = lazy_exports("reapkit.data", {"batches": ["Batch", "pad_batches"]})
    >>> __all__, __getattr__("pad_batches").__module__    # imported when first asked for
    (['Batch', 'pad_batches'], 'reapkit.data.batches')

In a package's ``__init__.py`` the first argument is ``__name__``.

This keeps ``import reapkit`` (and reading light constants such as ``reapkit.data.DOMAINS``) free
of torch until a name that needs it is used.
"""

from importlib import import_module


def lazy_exports(package: str, exports: dict[str, list[str]]):
    """`(__all__, __getattr__, __dir__)` for `package`, exporting {submodule: [names]}."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name):
        if name in where:
            return getattr(import_module(f".{where[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(vars(import_module(package))) | set(where))

    return sorted(where), __getattr__, __dir__
