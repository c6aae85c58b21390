"""User mistakes end in one line and a non-zero exit; only our own bugs may print a traceback."""

import functools
import sys


class UserError(Exception):
    """A problem the user can fix (bad path, bad file, bad flag); its message is the whole report."""


EXIT_USER_ERROR = 2


def cli(main):
    """Wrap a CLI entry point so a UserError becomes `error: ...` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
