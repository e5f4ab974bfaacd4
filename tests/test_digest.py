"""Member digests: BLAKE3 by default, sha256 selectable, and every file written before BLAKE3 still verifies.

``data/format1-sha256.npz`` was written by ckpt as it was before BLAKE3 (format version 1, every
digest sha256; made by running that code, not by this one): it must keep loading and verifying.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import ml_dtypes
import numpy as np
import pytest
from helpers import MANIFEST, content_digest, digest_field, flip_byte, npy_data_offset, read_manifest, slot_digest

import ckpt
from ckpt import cli as _cli
from ckpt.errors import ChecksumError, DependencyError, FormatError

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "format1-sha256.npz")


def golden_values() -> dict:
    """What the golden file holds (the generator's code, with its seed)."""
    rng = np.random.default_rng(20)
    return {
        "main": {"w": rng.standard_normal((8, 16), dtype=np.float32), "b": np.arange(5, dtype=np.int64),
                 "h": rng.standard_normal(32).astype(ml_dtypes.bfloat16)},
        "ema": {"w": np.ones((8, 16), np.float32), "copy": np.arange(5, dtype=np.int64)},
        "packed": {"z": np.zeros(4096, np.float32)},
        "config": {"lr": 0.1, "name": "golden"},
        "blob": b"raw bytes \x00\x01",
    }


def rewrite_manifest(path, edit) -> None:
    """The pack at ``path`` with its manifest changed by ``edit(doc)`` (members untouched)."""
    with zipfile.ZipFile(path) as zf:
        contents = {n: zf.read(n) for n in zf.namelist()}
    doc = read_manifest(path)
    edit(doc)
    contents[MANIFEST] = json.dumps(doc).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in contents.items():
            zf.writestr(n, data)


def assert_same(a, b):
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    else:
        assert a == b


@pytest.fixture
def golden(tmp_path):
    path = tmp_path / "golden.npz"
    shutil.copyfile(GOLDEN, path)
    return path


@pytest.fixture(autouse=True)
def _default_digest(monkeypatch):
    monkeypatch.delenv("CKPT_DIGEST", raising=False)
    yield
    ckpt.set_digest(None)


def test_golden_file_is_format_1_with_sha256_only():
    doc = read_manifest(GOLDEN)
    assert doc["version"] == 1
    records = [*doc["members"].values(), *doc["slots"].values()]
    assert records and all(digest_field(r) == "sha256" for r in records)


def test_golden_file_loads_and_verifies(golden):
    expected = golden_values()
    with ckpt.Pack(golden) as pack:
        pack.verify()
        for slot, value in expected.items():
            assert_same(value, pack.load(slot))
        infos = pack.slots_info
    assert all(i.algorithm == "sha256" and i.sha256 == i.digest == i.serialized_sha256_hash for i in infos.values())
    assert_same(expected["main"], ckpt.load(str(golden)))
    target = {k: np.zeros_like(v) for k, v in expected["main"].items()}
    ckpt.load_var_collection(str(golden), target)
    assert_same(expected["main"], target)
    report = ckpt.inspect(str(golden))
    assert report["format_version"] == 1
    assert {s["algorithm"] for s in report["slots"].values()} == {"sha256"}


def test_golden_file_damage_is_caught_by_its_sha256(golden):
    flip_byte(golden, npy_data_offset(golden, "0.npy") + 5)
    with pytest.raises(ChecksumError, match="sha256") as info:
        ckpt.load(str(golden))
    assert info.value.member == "0.npy"
    assert info.value.expected == read_manifest(golden)["members"]["0.npy"]["sha256"] != info.value.found


def test_cli_verify_and_info_on_the_golden_file(golden, capsys):
    assert _cli.main(["verify", str(golden)]) == 0
    assert _cli.main(["info", str(golden)]) == 0
    out = capsys.readouterr().out
    digest = read_manifest(golden)["slots"]["main"]["sha256"]
    assert any(line.split()[-2:] == ["sha256", digest] for line in out.splitlines())


def test_new_files_record_blake3(tmp_path):
    path = tmp_path / "new.npz"
    arrays = {"w": np.arange(12.0).reshape(3, 4), "big": np.random.default_rng(0).random(3 << 20)}  # 24 MiB
    ckpt.save_var_collection(str(path), arrays)
    doc = read_manifest(path)
    assert doc["version"] == 2
    with zipfile.ZipFile(path) as zf:
        for name, rec in doc["members"].items():
            assert rec == {"size": zf.getinfo(name).file_size, "blake3": content_digest(zf.read(name), "blake3")}
    slot = doc["slots"]["main"]
    assert "sha256" not in slot
    assert slot["blake3"] == slot_digest([doc["members"][m]["blake3"] for m in slot["members"]], "blake3")
    assert_same(arrays, ckpt.load(str(path)))


@pytest.mark.parametrize("how", ["set_digest", "env"])
def test_sha256_is_selectable_and_writes_format_1(tmp_path, monkeypatch, how):
    if how == "set_digest":
        ckpt.set_digest("sha256")
    else:
        monkeypatch.setenv("CKPT_DIGEST", "sha256")
    path = tmp_path / "sha.npz"
    arrays = {"w": np.arange(6, dtype=np.float32)}
    with ckpt.Pack(str(path)) as pack:
        pack.dump("main", arrays)
        pack.dump("cfg", {"a": 1})
        assert all(i.algorithm == "sha256" and i.sha256 for i in pack.slots_info.values())
    doc = read_manifest(path)
    assert doc["version"] == 1  # readers from before BLAKE3 open it
    assert all(digest_field(r) == "sha256" for r in [*doc["members"].values(), *doc["slots"].values()])
    with zipfile.ZipFile(path) as zf:
        assert doc["members"]["0.npy"]["sha256"] == content_digest(zf.read("0.npy"), "sha256")
    assert_same(arrays, ckpt.load(str(path)))


def test_set_digest_refuses_unknown_algorithms(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="md5"):
        ckpt.set_digest("md5")
    with pytest.raises(TypeError):
        ckpt.set_digest(256)  # type: ignore[arg-type]
    ckpt.set_digest(" SHA256 ")  # names are not case-sensitive
    ckpt.save_var_collection(str(tmp_path / "s.npz"), {"a": np.zeros(1)})
    assert read_manifest(tmp_path / "s.npz")["version"] == 1
    ckpt.set_digest(None)
    monkeypatch.setenv("CKPT_DIGEST", "crc32")
    with pytest.raises(ValueError, match="CKPT_DIGEST"):
        ckpt.save_var_collection(str(tmp_path / "x.npz"), {"a": np.zeros(1)})
    assert not os.path.exists(tmp_path / "x.npz")


def test_rewriting_a_sha256_pack_keeps_its_digests_and_adds_blake3(golden):
    before = read_manifest(golden)
    with ckpt.Pack(golden) as pack:
        pack.dump("extra", {"x": np.arange(3)})
    after = read_manifest(golden)
    assert after["version"] == 2
    for slot in ("main", "ema", "packed", "config", "blob"):
        assert after["slots"][slot]["sha256"] == before["slots"][slot]["sha256"], slot
        for m in after["slots"][slot]["members"]:
            assert after["members"][m] == before["members"][m]
    extra = after["slots"]["extra"]
    assert digest_field(extra) == "blake3"
    assert all(digest_field(after["members"][m]) == "blake3" for m in extra["members"])
    expected = golden_values()
    with ckpt.Pack(golden) as pack:
        pack.verify()
        assert_same(expected["ema"], pack.load("ema"))
        assert_same({"x": np.arange(3)}, pack.load("extra"))


def test_copying_a_damaged_sha256_member_is_refused(golden):
    flip_byte(golden, npy_data_offset(golden, "ema/0.npy") + 1)
    original = golden.read_bytes()
    with ckpt.Pack(golden) as pack, pytest.raises(ChecksumError, match="sha256"):
        pack.dump("extra", {"x": np.arange(3)})
    assert golden.read_bytes() == original


def test_blake3_damage_is_caught(tmp_path):
    path = tmp_path / "b.npz"
    ckpt.save_var_collection(str(path), {"w": np.arange(1000, dtype=np.float64)})
    flip_byte(path, npy_data_offset(path, "0.npy") + 100)
    with pytest.raises(ChecksumError, match="blake3"):
        ckpt.load(str(path))
    with ckpt.Pack(str(path)) as pack, pytest.raises(ChecksumError, match="0.npy"):
        pack.verify()


def test_a_slot_may_use_another_algorithm_than_its_members(tmp_path):
    """The slot digest is its own algorithm over the members' raw digests, whatever theirs are."""
    path = tmp_path / "mixed.npz"
    ckpt.save_var_collection(str(path), {"w": np.arange(4)})

    def edit(doc):
        slot = doc["slots"]["main"]
        del slot["blake3"]
        slot["sha256"] = slot_digest([doc["members"][m]["blake3"] for m in slot["members"]], "sha256")

    rewrite_manifest(path, edit)
    with ckpt.Pack(str(path)) as pack:
        info = pack.slots_info["main"]
        pack.verify()
    assert info.algorithm == "sha256" and info.digest == read_manifest(path)["slots"]["main"]["sha256"]


def test_a_file_declaring_version_1_cannot_hold_blake3(tmp_path):
    path = tmp_path / "v1.npz"
    ckpt.save_var_collection(str(path), {"w": np.arange(4)})
    rewrite_manifest(path, lambda doc: doc.update(version=1))
    with pytest.raises(FormatError, match="version 1"):
        ckpt.load(str(path))


_NO_BLAKE3 = textwrap.dedent("""
    import sys
    sys.modules["blake3"] = None  # as if the package were not installed
    import json, zipfile
    import numpy as np
    import ckpt
    from ckpt.errors import DependencyError
    new, old_blake3, golden = sys.argv[1:4]
    ckpt.save_var_collection(new, {"w": np.arange(3.0)})
    doc = json.loads(zipfile.ZipFile(new).read("__ckpt__/manifest.json"))
    assert doc["version"] == 1 and "sha256" in doc["slots"]["main"], doc
    assert ckpt.load(golden)["b"].tolist() == [0, 1, 2, 3, 4]
    try:
        ckpt.load(old_blake3)
    except DependencyError as e:
        assert old_blake3 in str(e) and "blake3" in str(e), e
        print("refused:", e)
    else:
        raise SystemExit("a blake3 file loaded without blake3")
""")


def test_without_the_blake3_package_files_get_sha256_and_blake3_files_are_refused_clearly(tmp_path):
    b3 = tmp_path / "b3.npz"
    ckpt.save_var_collection(str(b3), {"w": np.arange(3.0)})
    proc = subprocess.run([sys.executable, "-c", _NO_BLAKE3, str(tmp_path / "new.npz"), str(b3), GOLDEN],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout
    assert issubclass(DependencyError, RuntimeError)
