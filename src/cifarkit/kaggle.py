"""Submit a checked CSV to a Kaggle competition with the official `kaggle` package (optional extra).

`python -m cifarkit.kaggle submit COMPETITION FILE -m MESSAGE`; predict.py calls submit().
The file is checked before the package is even imported, so a bad one never leaves the machine.
The package authenticates when it is imported (printing help, or exiting the process, without
credentials), so its API class is imported with that contained and authenticate() is called here,
where every failure becomes one line that never shows a credential.
"""

import argparse
import contextlib
import io
import os

from . import submission
from .errors import UserError, cli

INSTALL = 'pip install -e ".[kaggle]" (or pip install kaggle)'
UPLOAD_FAILED = "Could not submit to competition"  # competition_submit's reply when the file upload fails
SECRET_ENV = ("KAGGLE_KEY", "KAGGLE_API_TOKEN")


def where(config="~/.kaggle/kaggle.json"):
    return ("Kaggle looks for an API token in KAGGLE_API_TOKEN or ~/.kaggle/access_token, a legacy key in "
            f"KAGGLE_USERNAME and KAGGLE_KEY or {config}, or a `kaggle auth login`; "
            "create a token at https://www.kaggle.com/settings/api")


def _redact(text, api=None):
    """One line, with any credential the process knows replaced, so no error can print one."""
    text = str(text)
    values = getattr(api, "config_values", {}) or {}
    secrets = [os.environ.get(k) for k in SECRET_ENV] + [values.get(k) for k in ("key", "token")]
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return " ".join(text.split())


@contextlib.contextmanager
def _contained(doing, api=None):
    """Silence the package's own printing and turn its failures into one UserError line.

    Yields the buffer of what it printed: an upload failure is only explained there.
    """
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            yield said
    except SystemExit:  # authenticate() found no usable credentials and called exit()
        config = getattr(api, "config", None) or "~/.kaggle/kaggle.json"
        raise UserError(f"no valid Kaggle credentials while {doing}: {where(config)}") from None
    except OSError as e:  # requests' errors are OSErrors; an HTTP one carries the server's answer
        response = getattr(e, "response", None)
        if response is not None:
            raise UserError(f"Kaggle refused (HTTP {response.status_code}) while {doing}: {_redact(e, api)}") from None
        raise UserError(f"cannot reach Kaggle while {doing} ({type(e).__name__}): check the network "
                        "connection or proxy") from None


def _api():
    try:
        with _contained("importing the kaggle package"):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError as e:
        if (e.name or "").split(".")[0] == "kaggle":
            raise UserError(f"the kaggle package is not installed: {INSTALL}") from None
        raise UserError(f"the kaggle package is incomplete ({e}): reinstall it, {INSTALL}") from None
    api = KaggleApi()
    with _contained("authenticating", api):
        api.authenticate()
    return api


def submit(competition, path, message, *, rows, num_classes=None, classes=None):
    """Check `path` as submission.check does, then upload it; return Kaggle's reply."""
    submission.check(path, rows, num_classes=num_classes, classes=classes)
    api = _api()
    with _contained(f"submitting to {competition}", api) as said:
        result = api.competition_submit(str(path), message, competition, quiet=True)
    reply = getattr(result, "message", result)
    if reply == UPLOAD_FAILED:
        printed = said.getvalue().strip().splitlines()
        why = f": {_redact(printed[-1], api)}" if printed else ""
        raise UserError(f"Kaggle refused the upload of {path} to {competition}{why}")
    return _redact(reply, api)


@cli
def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m cifarkit.kaggle",
        description=f"Submit to Kaggle with the official kaggle package ({INSTALL}). {where()}.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "submit", help="check FILE against the split, then upload it",
        description="Check FILE as `python -m cifarkit.submission check` does (header, one row per test id in "
                    "order, labels in range of the split's classes, read from its manifest.json), then upload "
                    "it to COMPETITION. A file that fails the check is never uploaded.")
    s.add_argument("competition", metavar="COMPETITION", help="the competition's name in its URL, e.g. cifar-10")
    s.add_argument("file", metavar="FILE", help="the submission CSV (id,label)")
    s.add_argument("-m", "--message", required=True, help="the submission's description on Kaggle")
    submission.add_expect_args(s)
    args = p.parse_args(argv)
    reply = submit(args.competition, args.file, args.message, **submission.expected(args))
    print(f"submitted {args.file} to {args.competition}: {reply}")


if __name__ == "__main__":
    main()
