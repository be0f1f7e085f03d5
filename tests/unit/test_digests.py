"""The front-end's remembered stream digests (bmm.storage.digests)."""

import os

from bmm.storage import digests
from bmm.storage.digests import DigestCache


def test_keys_follow_the_files_and_the_parameters(tmp_path):
    f = tmp_path / "img"
    f.write_bytes(b"x" * 100)
    cache = DigestCache(str(tmp_path / "c"))
    k = cache.key([str(f)], {"size": 1})
    assert k == cache.key([str(f)], {"size": 1}) != cache.key([str(f)], {"size": 2})
    os.symlink(f, tmp_path / "same")               # another name, the same file: the same key
    assert cache.key([str(tmp_path / "same")], {"size": 1}) == k
    f.write_bytes(b"y" * 100)                      # same size, rewritten: another key
    assert cache.key([str(f)], {"size": 1}) != k
    assert not (tmp_path / "c").exists()           # nothing written until put


def test_get_put_drop_and_junk(tmp_path):
    cache = DigestCache(str(tmp_path / "c"))
    d = "ab" * 32
    assert cache.get("k") is None
    cache.put("k", d)
    assert cache.get("k") == d and oct(os.stat(cache.dir).st_mode & 0o777) == "0o700"
    (tmp_path / "c" / "bad.sha256").write_text("not a digest\n")
    assert cache.get("bad") is None
    cache.drop("k")
    cache.drop("k")
    assert cache.get("k") is None


def test_only_the_newest_entries_are_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(digests, "MAX_ENTRIES", 3)
    cache = DigestCache(str(tmp_path / "c"))
    for i in range(5):
        cache.put(f"k{i}", f"{i:064x}")
        os.utime(cache._path(f"k{i}"), ns=(i * 10**9, i * 10**9))
    cache.put("k5", "f" * 64)
    assert sorted(os.listdir(cache.dir)) == ["k3.sha256", "k4.sha256", "k5.sha256"]
