"""Submitting to Kaggle: every failure is one line, a bad file never leaves, a credential is never printed.

The `kaggle` package is replaced at its boundary by a fake package on sys.path that behaves like the
real one (2.x): authenticate() prints help and calls exit(1) without credentials, refusals are
OSErrors carrying the server's response, a failed upload is a reply message. HOME and KAGGLE_* point
into the test's folder, so the real user's credentials are never read.
"""

import importlib
import importlib.util
import os
import sys
import textwrap

import pytest

from cifarkit import kaggle, split

from conftest import run_cli

KEY = "0123456789abcdef-secret"

FAKE_API = '''
import os

CALLS = []
SUBMIT = None  # set by a test: what competition_submit does after recording its call


class HTTPError(OSError):
    """requests.HTTPError's shape: an OSError with the server's response."""

    def __init__(self, message, status_code):
        super().__init__(message)
        self.response = type("Response", (), {"status_code": status_code})()


class KaggleApi:
    config = os.path.join(os.path.expanduser("~"), ".kaggle", "kaggle.json")

    def __init__(self):
        CALLS.append("init")
        self.config_values = {}

    def authenticate(self):
        CALLS.append("authenticate")
        self.config_values = {k[len("KAGGLE_"):].lower(): v for k, v in os.environ.items() if k.startswith("KAGGLE_")}
        if not ("username" in self.config_values and "key" in self.config_values):
            print("Authentication required to call the Kaggle API. ...")
            exit(1)

    def competition_submit(self, file_name, message, competition, quiet=False):
        with open(file_name) as f:
            CALLS.append(("submit", f.read(), message, competition))
        return SUBMIT(self)
'''

INIT_2_1 = '''
from kaggle.api.kaggle_api_extended import KaggleApi

api = KaggleApi()
try:
    api.authenticate()
except (Exception, SystemExit):
    pass
'''
INIT_2_0 = INIT_2_1.replace("try:\n    api.authenticate()\nexcept (Exception, SystemExit):\n    pass", "api.authenticate()")


@pytest.fixture(autouse=True)
def no_real_home(tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))


@pytest.fixture
def clean_modules():
    """Start with no kaggle module imported, and forget those the test imported, fake or real."""
    before = {k: v for k, v in sys.modules.items() if k == "kaggle" or k.startswith("kaggle.")}
    for k in before:
        del sys.modules[k]
    yield
    for k in [k for k in sys.modules if k == "kaggle" or k.startswith("kaggle.")]:
        del sys.modules[k]
    sys.modules.update(before)


def install_fake(root, monkeypatch, init=INIT_2_1):
    pkg = root / "fake_site" / "kaggle"
    (pkg / "api").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(init))
    (pkg / "api" / "__init__.py").write_text("")
    (pkg / "api" / "kaggle_api_extended.py").write_text(FAKE_API)
    monkeypatch.syspath_prepend(str(root / "fake_site"))


@pytest.fixture
def fake(tmp_path, monkeypatch, clean_modules):
    """The fake package, imported; tests set fake.SUBMIT and read fake.CALLS."""
    install_fake(tmp_path, monkeypatch)
    api = importlib.import_module("kaggle.api.kaggle_api_extended")  # `kaggle.api` is the package's instance

    assert api.__file__.startswith(str(tmp_path))
    api.CALLS.clear()  # the package's own import-time authentication is not ours to count
    return api


@pytest.fixture
def logged_in(monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", KEY)


@pytest.fixture
def split_dir(cifar10_dir):
    return split.ensure("cifar10", cifar10_dir, "data/cifar10", 9, 3)


def valid_csv(path, rows=40):
    path.write_text("id,label\n" + "".join(f"{i},{i % 10}\n" for i in range(rows)))
    return path


def submit_cli(path, capsys, *extra):
    return run_cli(kaggle.main, ["submit", "cifar-10", str(path), "-m", "simple_cnn, 1 epoch",
                                 "--dataset", "cifar10", *extra], capsys)


def assert_one_line(code, out, err, *words):
    assert code == 2 and out == "", (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)
    assert KEY not in err


def test_success_uploads_the_checked_file(fake, logged_in, split_dir, tmp_path, capsys):
    fake.SUBMIT = lambda api: type("Reply", (), {"message": "Successfully submitted to CIFAR-10"})()
    path = valid_csv(tmp_path / "sub.csv")
    code, out, err = submit_cli(path, capsys)
    assert code == 0, err
    assert fake.CALLS == ["init", "authenticate", ("submit", path.read_text(), "simple_cnn, 1 epoch", "cifar-10")]
    assert out == f"submitted {path} to cifar-10: Successfully submitted to CIFAR-10\n"


@pytest.mark.parametrize("text, message", [
    ("id,label\n0,1\n", "1 rows, expected 40"),
    ("id,label\n" + "".join(f"{i},{i % 10 + 5}\n" for i in range(40)), "label 10 on row 6 is out of range 0..9"),
    ("id,prediction\n", "header must be exactly 'id,label'"),
])
def test_bad_file_never_leaves_the_machine(tmp_path, monkeypatch, clean_modules, logged_in, split_dir, capsys,
                                           text, message):
    install_fake(tmp_path, monkeypatch)
    path = tmp_path / "sub.csv"
    path.write_text(text)
    assert_one_line(*submit_cli(path, capsys), message)
    assert "kaggle" not in sys.modules, "the package was imported, so a connection could have been made"


def test_label_names_are_checked_against_the_classes(fake, logged_in, split_dir, tmp_path, capsys):
    path = valid_csv(tmp_path / "sub.csv")
    assert_one_line(*submit_cli(path, capsys, "--label-format", "name"), "label '0' on row 1 is not a class name")
    assert fake.CALLS == []


def test_missing_package_says_how_to_install(monkeypatch, split_dir, tmp_path, capsys):
    for name in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended"):
        monkeypatch.setitem(sys.modules, name, None)  # import of kaggle halted, as if not installed
    assert_one_line(*submit_cli(valid_csv(tmp_path / "sub.csv"), capsys), "the kaggle package is not installed",
                    'pip install -e ".[kaggle]"', "pip install kaggle")


def test_package_with_a_missing_dependency(tmp_path, monkeypatch, clean_modules, split_dir, capsys):
    install_fake(tmp_path, monkeypatch)
    (tmp_path / "fake_site" / "kaggle" / "api" / "kaggle_api_extended.py").write_text("import kagglesdk_not_here\n")
    assert_one_line(*submit_cli(valid_csv(tmp_path / "sub.csv"), capsys),
                    "the kaggle package is incomplete (No module named 'kagglesdk_not_here'): reinstall it")


@pytest.mark.parametrize("init", [INIT_2_1, INIT_2_0], ids=["authenticate-exits", "import-exits"])
def test_no_credentials_says_where_they_are_looked_for(tmp_path, monkeypatch, clean_modules, split_dir, capsys, init):
    install_fake(tmp_path, monkeypatch, init)
    code, out, err = submit_cli(valid_csv(tmp_path / "sub.csv"), capsys)
    assert_one_line(code, out, err, "no valid Kaggle credentials", "~/.kaggle/kaggle.json" if init == INIT_2_0 else
                    str(tmp_path / "home" / ".kaggle" / "kaggle.json"),
                    "KAGGLE_USERNAME and KAGGLE_KEY", "KAGGLE_API_TOKEN", "~/.kaggle/access_token")


def refuse(api):
    raise sys.modules["kaggle.api.kaggle_api_extended"].HTTPError(
        f"You must accept this competition's rules before you can submit (key {KEY})", 403)


def unreachable(api):
    raise ConnectionError(f"HTTPSConnectionPool(host='api.kaggle.com'): Failed to resolve; auth {KEY}")


def upload_failed(api):
    print(f"Server returned 500. Please try again. {KEY}")
    return type("Reply", (), {"message": kaggle.UPLOAD_FAILED})()


@pytest.mark.parametrize("behaviour, words", [
    (refuse, ["Kaggle refused (HTTP 403) while submitting to cifar-10: You must accept this competition's rules",
              "(key ***)"]),
    (unreachable, ["cannot reach Kaggle while submitting to cifar-10 (ConnectionError): check the network"]),
    (upload_failed, ["Kaggle refused the upload of", "to cifar-10: Server returned 500. Please try again. ***"]),
], ids=["refused", "no-network", "upload-failed"])
def test_server_failures_are_one_line_without_the_key(fake, logged_in, split_dir, tmp_path, capsys, behaviour, words):
    fake.SUBMIT = behaviour
    assert_one_line(*submit_cli(valid_csv(tmp_path / "sub.csv"), capsys), *words)
    assert fake.CALLS[-1][0] == "submit"


@pytest.mark.skipif(importlib.util.find_spec("kaggle") is None, reason="the real kaggle package is not installed")
def test_real_package_without_credentials(clean_modules, split_dir, tmp_path, capsys):
    code, out, err = submit_cli(valid_csv(tmp_path / "sub.csv"), capsys)
    assert_one_line(code, out, err, "no valid Kaggle credentials", str(tmp_path / "home"), "KAGGLE_API_TOKEN")


def test_predict_submits_the_file_it_wrote(fake, logged_in, trained, predict_main, tmp_path, capsys):
    fake.SUBMIT = lambda api: type("Reply", (), {"message": "Successfully submitted"})()
    path = tmp_path / "sub.csv"
    code, out, err = run_cli(predict_main, ["--checkpoint", str(trained.run / "best.pt"), "--submission", str(path),
                                            "--submit", "cifar-10", "-m", "tiny run"], capsys)
    assert code == 0, err
    assert fake.CALLS[-1] == ("submit", path.read_text(), "tiny run", "cifar-10")
    assert out.endswith(f"submitted {path} to cifar-10: Successfully submitted\n")
