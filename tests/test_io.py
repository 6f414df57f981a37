"""speakerid.io: what a user keeps is either the old file or the whole new one, never half of it."""

import json
import os
import stat

import pytest

from speakerid.io import atomic_path, atomic_write, write_json_atomic, write_text_atomic


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "scores.txt"
    write_text_atomic(target, "old 1\n")
    with pytest.raises(RuntimeError, match="disk gone"):
        with atomic_write(target) as f:
            f.write("new half")
            raise RuntimeError("disk gone")
    assert target.read_text() == "old 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.txt"]


def test_successful_write_replaces_and_creates_parents(tmp_path):
    target = tmp_path / "a" / "b" / "report.json"
    write_json_atomic(target, {"eer": 0.125})
    write_json_atomic(target, {"eer": 0.0625})
    assert json.loads(target.read_text()) == {"eer": 0.0625}
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_binary_writer_by_name(tmp_path):
    target = tmp_path / "model.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"\x00\x01")
        assert not target.exists()  # invisible until the block succeeds
    assert target.read_bytes() == b"\x00\x01"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_permissions_follow_the_umask_like_a_normal_write(tmp_path):
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "x.txt", "x")
        (tmp_path / "y.txt").write_text("y")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "x.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "y.txt").stat().st_mode) == 0o644


def test_json_is_standard_json_with_null_for_non_finite_numbers(tmp_path):
    """Python writes inf and NaN as Infinity and NaN, which are not JSON: jq, JavaScript and strict parsers
    reject the file (an evaluation's `accept nothing` minDCF threshold is inf)."""
    import numpy as np

    path = tmp_path / "r.json"
    write_json_atomic(path, {"eer": 0.1, "min_dcf_p0.01_threshold": float("inf"), "ci": [float("-inf"), 0.5],
                             "nested": {"nan": float("nan"), "numpy": np.float64("inf"), "n": 3}, "t": (1.0, np.nan)})

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "eer": 0.1, "min_dcf_p0.01_threshold": None, "ci": [None, 0.5], "nested": {"nan": None, "numpy": None, "n": 3},
        "t": [1.0, None]}
