"""The download URL signing key lives in the database (cloud/signed_urls.py): every process on one
database gets the same key whatever its data directory, and an earlier release's key file is taken over
on the first start so that URLs already sent keep working."""

from __future__ import annotations

import secrets

from sqlalchemy import select

from edgefleet.cloud import signed_urls
from edgefleet.cloud.db import make_engine, make_sessions
from edgefleet.cloud.settings import CloudSettings
from edgefleet.cloud.signed_urls import CloudSecret, check_download_signature, download_secret, download_signature


def test_processes_with_different_data_dirs_share_one_key_and_an_old_key_file_is_kept(tmp_path):
    old_key = secrets.token_bytes(32)
    (tmp_path / "data-old").mkdir()
    (tmp_path / "data-old" / "download-url.key").write_text(old_key.hex() + "\n")  # an earlier release's file
    sent_before = download_signature(old_key, "cnn", 3, "pi-1", 2_000_000_000)
    for db_name, first_dir, key_expected in (("upgraded.db", "data-old", old_key), ("new.db", "data-a", None)):
        sessions = make_sessions(make_engine(f"sqlite:///{tmp_path / db_name}"))
        keys = []
        for data in (first_dir, "data-b"):
            signed_urls._cache.clear()  # as separate processes: nothing remembered between them
            keys.append(download_secret(CloudSettings(data_dir=tmp_path / data), sessions))
        assert keys[0] == keys[1] and len(keys[0]) == 32
        with sessions() as db:
            assert db.scalars(select(CloudSecret.value)).all() == [keys[0].hex()]
        if key_expected is not None:
            assert keys[0] == key_expected
            check_download_signature(keys[0], "cnn", 3, "pi-1", 2_000_000_000, sent_before, now=1_900_000_000)
        else:
            assert keys[0] != old_key and not (tmp_path / "data-a" / "download-url.key").exists()
