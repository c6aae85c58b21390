"""User mistakes end in one line and a non-zero exit; only our own bugs may print a traceback."""

import argparse
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default once: not where the help already says it, nor None/False (meaning 'not set')."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default in (None, False):
            return action.help
        return super()._get_help_string(action)
