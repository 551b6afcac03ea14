"""`write_atomic`: the file holds the old bytes or the new ones, and no scratch file is left."""

import pytest

from ac_jax.atomic import write_atomic


@pytest.mark.parametrize("durable", [False, True])
def test_writes_text_and_bytes_and_leaves_no_scratch_file(tmp_path, durable):
    path = tmp_path / "meta.json"
    write_atomic(path, "{\"a\": 1}\n", durable=durable)
    assert path.read_text(encoding="utf-8") == "{\"a\": 1}\n"
    write_atomic(path, b"\x00\x01", durable=durable)  # replaces, whatever was there
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    write_atomic(path, "old")
    with pytest.raises(TypeError):  # the data cannot be written: nothing is replaced
        write_atomic(path, 12345)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
