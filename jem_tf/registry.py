"""Classes by name, registered by a class decorator: what the objective registry
(`trainers/registry.py`, `--objective`) and the evaluation registry (`jem_tf/evaluation/registry.py`,
`--eval`) share. It lives in the library so both can use it (the library never imports trainers/).

    OBJECTIVES = Registry("objective", name_attribute="objective_name",
                          unknown=lambda name, names: f"--objective={name!r} is not registered ...")

    @OBJECTIVES.register("jem")
    class JEM(...): ...

    OBJECTIVES.get("jem")  # JEM
"""


class Registry:
    """A name -> class table filled by `register`.

    Args:
      kind: what is registered, for messages ("objective", "evaluation").
      name_attribute: the class attribute `register` sets to the class's name.
      base: when given, only subclasses of it can be registered (TypeError otherwise).
      unknown: `unknown(name, names)` -> the message of the ValueError `get` raises for an
        unregistered name (default: one naming the registered ones).
    """

    def __init__(self, kind: str, *, name_attribute: str = "name", base: type = None, unknown=None):
        self.kind = kind
        self.name_attribute = name_attribute
        self.base = base
        self._unknown = unknown
        self._classes = {}

    def register(self, name: str):
        """Class decorator: makes the class the `kind` called `name`. A second class under a taken
        name is a ValueError (re-registering the same class, as a module reload does, is not)."""

        def add(cls):
            if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"@register({name!r}) expects {_article(self.base.__name__)} {self.base.__name__} "
                                f"subclass; received {cls!r}.")
            registered = self._classes.get(name)
            if registered is not None and registered is not cls:
                raise ValueError(f"The {self.kind} {name!r} is already registered ({registered.__qualname__}); "
                                 f"{cls.__qualname__} cannot take its name.")
            setattr(cls, self.name_attribute, name)
            self._classes[name] = cls
            return cls

        return add

    def unregister(self, name: str) -> None:
        """Removes `name` if registered (tests register temporary classes)."""
        self._classes.pop(name, None)

    def get(self, name: str):
        """The class registered as `name`; ValueError naming the registered ones otherwise."""
        if name not in self._classes:
            names = tuple(self._classes)
            message = (self._unknown(name, names) if self._unknown is not None else
                       f"Unknown {self.kind} {name!r}; registered: {', '.join(names)}.")
            raise ValueError(message)
        return self._classes[name]

    def names(self) -> tuple:
        """The registered names, in the order they were registered."""
        return tuple(self._classes)

    def __contains__(self, name) -> bool:
        return name in self._classes


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


__all__ = ["Registry"]
