"""What the command-line entry points share: exit codes and flag parsing that ends in one message.

absl's own parser exits with code 1 on an unknown flag or a value it cannot parse
(`FATAL Flags parsing error: ...`); our commands exit 2 for every bad flag instead, so code 2
means "fix the command" whatever the flag's kind, and code 1 stays for unexpected failures.

    from jem_tf import cli
    cli.run(main)   # instead of app.run(main)
"""

import sys

from absl import app, flags, logging

EXIT_OK = 0
# An unexpected failure (a bug or an environment problem no check foresaw): Python's own code,
# with its traceback.
EXIT_UNEXPECTED = 1
# The command cannot run as given: bad or unknown flag, unusable data, unusable workdir. One
# message says what to change; nothing was written.
EXIT_BAD_INPUT = 2
# Training diverged (non-finite loss or runaway generative loss).
EXIT_DIVERGED = 3


class UsageError(ValueError):
    """A bad command line, reported as one message with EXIT_BAD_INPUT."""


def parse_flags(argv):
    """absl's parsing, but a parsing error is one line on stderr and exit code 2 (not 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.stderr.write(f"{argv[0]}: bad command line: {error}\nPass --helpshort or --helpfull to see the flags.\n")
        sys.exit(EXIT_BAD_INPUT)


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


__all__ = ["EXIT_BAD_INPUT", "EXIT_DIVERGED", "EXIT_OK", "EXIT_UNEXPECTED", "UsageError", "parse_flags",
           "parse_number_list", "run"]
