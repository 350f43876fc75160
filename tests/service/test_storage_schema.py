"""The storage schema version: written at submit, an unversioned study is version 1, a study
written by a newer schema is refused with one line naming the study and both versions."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path

import pytest
from conftest import TINY_SPEC

from acpsearch.errors import StorageError
from acpsearch.service import keys


def _submit(url: str, name: str) -> object:
    from acpsearch.service import study as st
    from acpsearch.service.spec import parse_spec
    from acpsearch.service.storage import open_storage

    storage = open_storage(url)
    st.submit(storage, parse_spec(copy.deepcopy(TINY_SPEC)), name)
    return storage


def _set_version(db: Path, name: str, value: str | None) -> None:
    """Rewrite (or with None delete) the stored version, as another release would have left it."""
    con = sqlite3.connect(db)
    try:
        sid = con.execute("select study_id from studies where study_name=?", (name,)).fetchone()[0]
        con.execute("delete from study_user_attributes where study_id=? and key=?", (sid, keys.SCHEMA))
        if value is not None:
            con.execute(
                "insert into study_user_attributes (study_id, key, value_json) values (?, ?, ?)",
                (sid, keys.SCHEMA, value),
            )
        con.commit()
    finally:
        con.close()


def test_submit_writes_the_current_version(tmp_path: Path) -> None:
    from acpsearch.service import study as st

    storage = _submit(f"sqlite:///{tmp_path / 's.db'}", "versioned")
    study = st.load_search_study(storage, "versioned")
    assert study.user_attrs[keys.SCHEMA] == keys.SCHEMA_VERSION == 1


def test_submit_on_a_journal_writes_the_version(tmp_path: Path) -> None:
    from acpsearch.service import study as st

    storage = _submit(f"journal:///{tmp_path / 's.log'}", "journaled")
    assert st.load_search_study(storage, "journaled").user_attrs[keys.SCHEMA] == keys.SCHEMA_VERSION


def test_an_unversioned_study_loads_as_version_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from acpsearch.cli import run
    from acpsearch.service import study as st

    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    _submit(url, "old")
    _set_version(db, "old", None)
    from acpsearch.service.storage import open_storage

    study = st.load_search_study(open_storage(url), "old")
    assert keys.SCHEMA not in study.user_attrs
    assert keys.schema_version(study.user_attrs) == 1
    assert run(["show", "old", "--storage", url, "--json"]) == 0
    capsys.readouterr()


def test_a_study_of_a_newer_schema_is_refused_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from acpsearch.cli import run
    from acpsearch.service import study as st
    from acpsearch.service.storage import open_storage

    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    _submit(url, "future")
    newer = keys.SCHEMA_VERSION + 1
    _set_version(db, "future", str(newer))
    with pytest.raises(StorageError) as info:
        st.load_search_study(open_storage(url), "future")
    msg = str(info.value)
    assert "\n" not in msg
    assert "'future'" in msg and f"version {newer}" in msg and f"version {keys.SCHEMA_VERSION}" in msg
    for command in (["show", "future"], ["run", "future"]):
        assert run([*command, "--storage", url]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"version {newer}" in err and "'future'" in err


@pytest.mark.parametrize("value", [True, "2", 1.5, None, 0, 1])
def test_schema_version_of_odd_values(value: object) -> None:
    """Only an int is a version; anything else reads as the unversioned layout (and loads)."""
    attrs = {keys.SCHEMA: value}
    expected = value if type(value) is int else keys.UNVERSIONED
    assert keys.schema_version(attrs) == expected
    keys.check_schema("odd", attrs)


def test_check_schema_refuses_only_newer() -> None:
    keys.check_schema("same", {keys.SCHEMA: keys.SCHEMA_VERSION})
    keys.check_schema("none", {})
    with pytest.raises(StorageError, match=r"^study 'new': stored with storage schema version 7, .* version 1;"):
        keys.check_schema("new", {keys.SCHEMA: 7})
