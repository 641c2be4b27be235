"""What the command-line entry points share: exit codes and flag parsing that ends in one message.

absl's own parser exits with code 1 on an unknown flag or a value it cannot parse
(`FATAL Flags parsing error: ...`); our commands exit 2 for every bad flag instead, so code 2
means "fix the command" whatever the flag's kind, and code 1 stays for unexpected failures.

    from jem_tf import cli
    cli.run(main)   # instead of app.run(main)

Flags that set a config dataclass's fields are generated from the fields themselves: each field's
`metadata` holds its help text (`help`, required), optionally its `choices` (an enum flag), the
element type of a tuple field (`item_type`; otherwise taken from the annotation or the default) or
`flag=False` for a field that is not a flag. A field added to the dataclass is a flag, with its
help in `--helpfull`, without any other edit:

    cli.define_dataclass_flags(TrainConfig, flag_values)           # defaults None: "not given"
    overrides = cli.values_from_flags(TrainConfig, flag_values)    # {field: value} of the given ones
"""

import dataclasses
import errno
import runpy
import sys
import types
import typing

from absl import app, flags, logging

# The flags cli.define_dataclass_flags defines belong to the module that calls it (its --helpshort
# lists them), not to this one.
flags.disclaim_key_flags()

EXIT_OK = 0
# An unexpected failure (a bug or an environment problem no check foresaw): Python's own code,
# with its traceback.
EXIT_UNEXPECTED = 1
# The command cannot run as given: bad or unknown flag, unusable data, unusable workdir. One
# message says what to change; nothing was written.
EXIT_BAD_INPUT = 2
# Training diverged (non-finite loss or runaway generative loss).
EXIT_DIVERGED = 3
# A file could not be written (disk full, quota, read-only, permissions): free space or choose
# another output and re-run; nothing half-written is left.
EXIT_WRITE_FAILED = 4
# Training: the workdir's run had progressed but none of its checkpoints restores (all moved to
# checkpoints/broken/); restore one, or re-run with --restart_from_scratch.
EXIT_NO_USABLE_CHECKPOINT = 5


# OS errors that mean "this path cannot be written": EXIT_WRITE_FAILED, not a bug.
WRITE_FAILED_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
_WRITE_FAILED_TEXT = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied")


def write_failure(error) -> bool:
    """Whether `error` (an OSError, or a TensorFlow error from its own file system) says a file
    could not be written for lack of space, quota or permission."""
    if isinstance(error, OSError):
        return error.errno in WRITE_FAILED_ERRNOS
    return type(error).__module__.startswith("tensorflow") and any(text in str(error) for text in _WRITE_FAILED_TEXT)


def exit_write_failed(error, what: str, fix: str):
    """Logs one message (no traceback) and exits with EXIT_WRITE_FAILED."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    logging.error("Could not write %s: %s. %s Nothing half-written was left.", what, first_line, fix)
    sys.exit(EXIT_WRITE_FAILED)


class RunStopped(Exception):
    """An expected, explained end of a command (preempted, workdir locked or not writable, no usable
    checkpoint); `exit_code` is its documented process exit code."""

    exit_code = EXIT_UNEXPECTED


class UsageError(ValueError):
    """A bad command line, reported as one message with EXIT_BAD_INPUT."""


def parse_flags(argv):
    """absl's parsing, but a parsing error is one line on stderr and exit code 2 (not 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.stderr.write(f"{argv[0]}: bad command line: {error}\nPass --helpshort or --helpfull to see the flags.\n")
        sys.exit(EXIT_BAD_INPUT)


def run_as_main(module_name: str):
    """Runs the command module `module_name` exactly as `python -m module_name` does.

    The console scripts of pyproject.toml (`jem-train`, ...) call this through the module's
    `command()`: run as `__main__`, the module's docstring is the usage text and `--helpshort` lists
    its flags (absl keys both on the main module), and both names of a command behave the same.
    """
    sys.modules.pop(module_name, None)  # the console script imported it to reach `command`
    runpy.run_module(module_name, run_name="__main__", alter_sys=True)


def run(main):
    """`app.run(main)` with `parse_flags`; `main` may raise UsageError for positional arguments."""

    def main_with_usage(argv):
        try:
            if len(argv) > 1:
                raise UsageError(f"Unexpected arguments {argv[1:]}: every setting is a --flag=value.")
            return main(argv)
        except UsageError as error:
            logging.error("%s", error)
            sys.exit(EXIT_BAD_INPUT)

    app.run(main_with_usage, flags_parser=parse_flags)


def parse_number_list(flag_name: str, values, kind=int) -> tuple:
    """A DEFINE_list flag's strings as numbers; a bad entry names the flag (absl's list flags
    do not check element types)."""
    if values is None:
        return None
    numbers = []
    for value in values:
        try:
            numbers.append(kind(value))
        except (TypeError, ValueError):
            expected = "whole number" if kind is int else "number"
            raise UsageError(
                f"--{flag_name}={','.join(map(str, values))} is invalid: {value!r} is not a {expected}; expected "
                f"comma-separated {expected}s."
            ) from None
    return tuple(numbers)


def _without_none(annotation):
    """X for Optional[X] / X | None; the annotation itself otherwise."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [kind for kind in typing.get_args(annotation) if kind is not type(None)]
        if len(kinds) == 1:
            return kinds[0]
    return annotation


def _field_default(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _item_type(field, annotation):
    """The element type of a tuple/list field: metadata `item_type`, tuple[T, ...], or the default's."""
    if "item_type" in field.metadata:
        return field.metadata["item_type"]
    element_types = {kind for kind in typing.get_args(annotation) if kind is not Ellipsis}
    if not element_types:
        element_types = {type(value) for value in _field_default(field) or ()}
    if element_types == {int}:
        return int
    if element_types and element_types <= {int, float}:
        return float
    return str


def flag_fields(config_class) -> list:
    """(field, kind) of every field of `config_class` that is a flag; kind is the annotation without
    Optional. A flag field without help text, or of a type no flag can hold, is a TypeError naming it."""
    annotations = typing.get_type_hints(config_class)
    result = []
    for field in dataclasses.fields(config_class):
        if not field.metadata.get("flag", True):
            continue
        where = f"{config_class.__name__}.{field.name}"
        if not field.metadata.get("help"):
            raise TypeError(f"{where} has no help text: declare it as dataclasses.field(default=..., "
                            "metadata=dict(help='...')), or metadata=dict(flag=False, ...) if it is not a flag.")
        kind = _without_none(annotations[field.name])
        if (typing.get_origin(kind) or kind) not in (bool, int, float, str, tuple, list):
            raise TypeError(f"{where}: no flag type for {annotations[field.name]!r}; use bool, int, float, str, "
                            "a tuple, Optional of one of them, or metadata=dict(flag=False, ...).")
        result.append((field, kind))
    return result


def define_dataclass_flags(config_class, flag_values=flags.FLAGS, *, field_defaults: bool = False,
                           group=None) -> list:
    """Defines one flag per field of `config_class` (see `flag_fields`) in `flag_values`; returns their names.

    field_defaults=False: every flag's default is None, i.e. "not given" (TrainConfig: the preset's
    value stays); True: the field's own default (a dataclass whose defaults are the defaults).
    group: `group(field_name)` -> the heading `--helpfull` lists the flag under (absl's module
    name), or None for the calling module (the default for every flag).
    """
    names = []
    for field, kind in flag_fields(config_class):
        default = _field_default(field) if field_defaults else None
        heading = group(field.name) if group is not None else None
        # absl attributes a flag to the module that defines it unless told otherwise.
        where = dict(flag_values=flag_values, **({"module_name": heading} if heading else {}))
        help_text = field.metadata["help"]
        choices = field.metadata.get("choices")
        base_kind = typing.get_origin(kind) or kind
        if base_kind in (tuple, list):
            if choices is not None:
                help_text = f"{help_text} Any of: {', '.join(map(str, choices))}."
            flags.DEFINE_list(field.name, None if default is None else [str(value) for value in default], help_text,
                              **where)
        elif choices is not None:
            flags.DEFINE_enum(field.name, default, list(choices), help_text, **where)
        elif base_kind is bool:
            flags.DEFINE_bool(field.name, default, help_text, **where)
        elif base_kind is int:
            flags.DEFINE_integer(field.name, default, help_text, **where)
        elif base_kind is float:
            flags.DEFINE_float(field.name, default, help_text, **where)
        else:
            flags.DEFINE_string(field.name, default, help_text, **where)
        if heading:
            # Listed under its heading by --helpfull, and still a key flag of the calling module (--helpshort).
            flags.declare_key_flag(field.name, flag_values=flag_values)
        names.append(field.name)
    return names


def values_from_flags(config_class, flag_values=flags.FLAGS) -> dict:
    """{field: value} of every flag of `config_class` whose value is not None (with field_defaults=False:
    the flags given), list flags as tuples (lists) of their element type; a bad list entry is a UsageError
    naming the flag."""
    values = {}
    for field, kind in flag_fields(config_class):
        value = flag_values[field.name].value
        if value is None:
            continue
        container = typing.get_origin(kind) or kind
        if container in (tuple, list):
            item_type = _item_type(field, kind)
            value = parse_number_list(field.name, value, item_type) if item_type in (int, float) else tuple(value)
            value = container(value)
            choices = field.metadata.get("choices")
            unknown = [item for item in value if choices is not None and item not in choices]
            if unknown:
                raise UsageError(f"--{field.name}={','.join(map(str, value))} is invalid: {unknown[0]!r} is not one "
                                 f"of {', '.join(map(str, choices))}.")
        values[field.name] = value
    return values


__all__ = ["EXIT_BAD_INPUT", "EXIT_DIVERGED", "EXIT_NO_USABLE_CHECKPOINT", "EXIT_OK", "EXIT_UNEXPECTED",
           "EXIT_WRITE_FAILED", "UsageError", "WRITE_FAILED_ERRNOS", "define_dataclass_flags", "exit_write_failed",
           "flag_fields", "parse_flags", "parse_number_list", "run", "values_from_flags", "write_failure"]
