"""Where an embedded PostgreSQL may live when we are root: the `postgres` user it runs as
must be able to enter every directory on the way (issue 12 item 8)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from keysync.embedded import blocked_for_postgres, cluster_dir_outside, scratch_dir

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: only as root does PostgreSQL run as another user"
)


@pytest.fixture
def tree() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="keysync-embedded-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_a_private_home_blocks_the_postgres_user(tree: Path) -> None:
    home = tree / "root"
    (home / "keysync").mkdir(parents=True)
    home.chmod(0o700)
    assert blocked_for_postgres(home / "keysync" / ".keysync" / "postgres") == home
    assert blocked_for_postgres(tree / "elsewhere" / "postgres") is None
    home.chmod(0o711)  # enter, not list: enough
    assert blocked_for_postgres(home / "keysync" / ".keysync" / "postgres") is None


def test_cluster_dir_outside_is_stable_per_data_dir_and_skips_unsafe_bases(tree: Path) -> None:
    planted = tree / "planted"  # writable by anyone: another user could have prepared it
    planted.mkdir()
    planted.chmod(0o777)
    good = tree / "lib" / "keysync"
    data_dir = tree / "root" / "my checkout" / ".keysync"

    chosen = cluster_dir_outside(data_dir, bases=(planted, good))
    assert chosen is not None and chosen.parent.parent == good
    assert chosen.name == "postgres" and chosen.parent.name.startswith("my_checkout-")
    assert (chosen.parent / "data_dir").read_text().strip() == str(data_dir)
    assert blocked_for_postgres(chosen) is None
    assert list(planted.iterdir()) == []
    # The same place on every start (the data stays), another one for another checkout.
    assert cluster_dir_outside(data_dir, bases=(planted, good)) == chosen
    other = cluster_dir_outside(tree / "root" / "other" / ".keysync", bases=(good,))
    assert other is not None and other != chosen
    assert cluster_dir_outside(data_dir, bases=(planted,)) is None


def test_scratch_dir_avoids_a_private_tmpdir(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private = tree / "root" / "tmp"
    private.mkdir(parents=True)
    (tree / "root").chmod(0o700)
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    path = scratch_dir("keysync-scratch-")
    try:
        assert not path.is_relative_to(tree)
        assert blocked_for_postgres(path / "pg") is None
        assert path.stat().st_mode & 0o777 == 0o755
    finally:
        shutil.rmtree(path)
