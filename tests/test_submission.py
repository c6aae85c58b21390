import csv

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifarkit import submission
from cifarkit.errors import UserError

ROWS, CLASSES = 20, 10
VALID = "id,label\n" + "".join(f"{i},{i % CLASSES}\n" for i in range(ROWS))


def check_text(tmp_path, text, **kw):
    path = tmp_path / "sub.csv"
    path.write_text(text)
    return submission.check(path, ROWS, num_classes=CLASSES, **kw)


def test_valid_file_passes(tmp_path):
    assert len(check_text(tmp_path, VALID)) == ROWS
    assert len(check_text(tmp_path, VALID.replace("\n", "\r\n"))) == ROWS  # Windows line ends are fine


@pytest.mark.parametrize("text, message", [
    ("", "not a readable CSV"),
    (VALID.replace("id,label", "label,id"), "header must be exactly 'id,label'"),
    (VALID.replace("id,label\n", ""), "header must be"),
    (VALID.replace("id,label", "id,label,extra").replace("\n1,1\n", "\n1,1,0\n"), "header must be"),
    (VALID.replace("\n9,9\n", "\n9,9,\n"), "line 11 has 3 fields, expected 2"),  # found by hypothesis
    (VALID.replace("\n5,5\n", "\n4,5\n"), "appears more than once"),
    (VALID.replace("\n5,5\n", "\n"), "19 rows, expected 20"),
    (VALID.replace("\n5,5\n", "\n5,cat\n"), "label 'cat' on row 6 is not a whole number"),
    (VALID.replace("\n5,5\n", "\n5,12\n"), "label 12 on row 6 is out of range 0..9"),
    (VALID.replace("\n5,5\n", "\n5,-1\n"), "not a whole number"),
    (VALID.replace("\n5,5\n", "\n5,05\n"), "not a whole number"),
    ("\r" + VALID, "line 1 is blank or holds a stray carriage return"),
    (VALID.replace("\n5,5\n", "\n\n5,5\n"), "line 7 is blank"),
    (VALID.replace("\n5,5\n", "\n5.0,5\n"), "id '5.0' on row 6 is not a whole number"),
    (VALID.replace("\n5,5\n6,6\n", "\n6,6\n5,5\n"), "row 6 has id 6, expected 5"),
])
def test_malformed_files_are_refused(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        check_text(tmp_path, text)


def test_write_never_leaves_an_invalid_file(tmp_path):
    path = tmp_path / "sub.csv"
    submission.write(path, [1] * ROWS, CLASSES)
    with pytest.raises(UserError, match="out of range"):
        submission.write(path, [11] * ROWS, CLASSES)
    assert pd.read_csv(path)["label"].tolist() == [1] * ROWS
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def test_class_names_format(tmp_path):
    names = [f"c{i}" for i in range(CLASSES)]
    path = tmp_path / "named.csv"
    submission.write(path, list(range(CLASSES)) * 2, CLASSES, classes=names)
    assert pd.read_csv(path)["label"].tolist()[:3] == ["c0", "c1", "c2"]
    path.write_text(path.read_text().replace("c3", "dog"))
    with pytest.raises(UserError, match="'dog' on row 4 is not a class name"):
        submission.check(path, ROWS, classes=names)


mutation = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 5)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.text(max_size=5)),
    st.tuples(st.just("replace"), st.integers(0, 10_000), st.text(min_size=1, max_size=5)),
)


def mutate(text, ops):
    for kind, pos, arg in ops:
        pos %= len(text) + 1
        if kind == "delete":
            text = text[:pos] + text[pos + arg:]
        elif kind == "insert":
            text = text[:pos] + arg + text[pos:]
        else:
            text = text[:pos] + arg + text[pos + len(arg):]
    return text


def truly_valid(text):
    """An independent reference, with the stdlib csv module instead of pandas."""
    text = text.replace("\r\n", "\n")
    if "\r" in text:
        return False
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if "" in lines:
        return False
    try:
        rows = list(csv.reader(lines, strict=True))
    except csv.Error:
        return False
    if rows[:1] != [["id", "label"]] or len(rows) != ROWS + 1:
        return False
    for i, row in enumerate(rows[1:]):
        if len(row) != 2 or row[0] != str(i):
            return False
        label = row[1]
        if not (label.isascii() and label.isdigit() and str(int(label)) == label and int(label) < CLASSES):
            return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutation, min_size=1, max_size=4))
def test_random_mutations_never_crash_or_falsely_accept(tmp_path, ops):
    text = mutate(VALID, ops)
    path = tmp_path / "sub.csv"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        submission.check(path, ROWS, num_classes=CLASSES)
        accepted = True
    except UserError:
        accepted = False
    if accepted:
        assert truly_valid(text), f"accepted an invalid file: {text!r}"
