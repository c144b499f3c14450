"""The dataset rules: every problem is found, named, and stops the dataset; good data passes."""

from __future__ import annotations

import struct
import warnings
import zipfile

import pytest

from sagedrop_contract import dataset_rules
from tests.helpers import jpeg_bytes, layout, make_zip


def inspect(tmp_path, members, **kwargs):
    return dataset_rules.inspect_zip(str(make_zip(tmp_path / "d.zip", members, **kwargs)))


def test_well_formed_dataset_is_usable_with_sorted_classes(tmp_path):
    report = inspect(tmp_path, layout(classes=("002.dog", "001.cat", "003.Great_Dane")))
    assert report.usable, report.problems
    assert report.classes == ["001.cat", "002.dog", "003.Great_Dane"]
    assert report.labels == ["cat", "dog", "Great_Dane"]
    assert report.counts["train"] == {"001.cat": 2, "002.dog": 2, "003.Great_Dane": 2}
    assert report.warnings == [
        "3 class(es) have fewer than 5 training images: '001.cat' (2), '002.dog' (2), "
        "'003.Great_Dane' (2)."
    ]
    assert report.listing_audit["leaked"] == {"valid": 0, "test": 0}


def test_single_top_level_folder_is_stripped(tmp_path):
    report = inspect(tmp_path, layout(prefix="dogImages/"))
    assert report.usable
    assert report.prefix == "dogImages/"
    assert report.files["train"]["001.cat"][0].startswith("dogImages/train/001.cat/")


@pytest.mark.parametrize(
    ("folder", "label"),
    [("001.Affenpinscher", "Affenpinscher"), ("12_husky", "husky"), ("cat", "cat"), ("007", "007")],
)
def test_labels_drop_numeric_prefix(folder, label):
    assert dataset_rules.label_for(folder) == label


@pytest.mark.parametrize(
    "name",
    ["../evil.jpg", "train/../../evil.jpg", "/etc/passwd", "C:/windows/evil.jpg", "a\\..\\b.jpg"],
)
def test_entries_escaping_the_folder_are_named(tmp_path, name):
    report = inspect(tmp_path, {**layout(), name: b"x"})
    assert not report.usable
    assert any(name in p and ("'..'" in p or "absolute" in p) for p in report.problems)


def test_symlink_entries_are_refused(tmp_path):
    report = inspect(tmp_path, layout(), symlinks={"train/001.cat/link.jpg": "/etc/passwd"})
    assert not report.usable
    assert any("train/001.cat/link.jpg" in p and "symbolic link" in p for p in report.problems)


def test_zip_bomb_by_compression_ratio(tmp_path):
    report = inspect(tmp_path, {**layout(), "train/001.cat/bomb.jpg": b"\0" * (8 * 1024 * 1024)})
    assert not report.usable
    assert any("bomb.jpg" in p and "zip bomb" in p for p in report.problems)


def test_total_size_and_entry_count_limits(tmp_path):
    archive = make_zip(tmp_path / "d.zip", layout(n=3))
    small = dataset_rules.Limits(max_total_bytes=1000)
    assert any("expands to" in p for p in dataset_rules.inspect_zip(str(archive), small).problems)
    few = dataset_rules.Limits(max_entries=5)
    assert any(
        "entries; the limit is 5" in p
        for p in dataset_rules.inspect_zip(str(archive), few).problems
    )


def test_sizes_declared_by_the_central_directory_are_used_not_trusted_blindly(tmp_path):
    """A member that inflates beyond its declared size fails extraction instead of filling disk."""
    archive_path = make_zip(tmp_path / "d.zip", layout())
    report = dataset_rules.inspect_zip(str(archive_path))
    with zipfile.ZipFile(archive_path) as archive:
        declared = sum(i.file_size for i in archive.infolist())
    assert report.total_bytes == declared


def test_non_images_are_ignored_and_counted(tmp_path):
    members = {**layout(), "train/001.cat/readme.txt": b"hi", "notes.md": b"x", "train/x.jpg": b"x"}
    members["__MACOSX/train/._img.jpg"] = b"junk"
    report = inspect(tmp_path, members)
    assert report.usable
    assert report.ignored_files == 3
    assert any("3 file(s) are not images" in w for w in report.warnings)


def test_class_only_in_valid_is_named(tmp_path):
    members = {**layout(), "valid/003.bird/a.jpg": jpeg_bytes()}
    report = inspect(tmp_path, members)
    assert not report.usable
    assert "Class '003.bird' appears in 'valid' but has no training images in 'train'." in (
        report.problems
    )


def test_class_missing_from_test_is_named(tmp_path):
    members = {k: v for k, v in layout().items() if not k.startswith("test/002.dog/")}
    report = inspect(tmp_path, members)
    assert "Class '002.dog' is in 'train' but has no images in 'test'." in report.problems


def test_too_few_classes(tmp_path):
    report = inspect(tmp_path, layout(classes=("001.cat",)))
    assert any("Only 1 class(es)" in p for p in report.problems)


def test_no_train_folder(tmp_path):
    report = inspect(tmp_path, {"pictures/cat/a.jpg": jpeg_bytes(), "pictures/dog/b.jpg": b"x"})
    assert not report.usable
    assert any("No 'train' folder" in p for p in report.problems)


def test_folders_with_the_same_label_collide(tmp_path):
    report = inspect(tmp_path, layout(classes=("001.cat", "002.cat")))
    assert any("all give the label 'cat'" in p for p in report.problems)


def test_missing_splits_are_a_warning_not_a_problem(tmp_path):
    report = inspect(tmp_path, layout(splits=("train",), n=5))
    assert report.usable
    assert report.missing_splits == ["valid", "test"]
    assert any("split off 'train'" in w for w in report.warnings)


def test_not_a_zip(tmp_path):
    path = tmp_path / "d.zip"
    path.write_bytes(b"PK\x03\x04 but not really a zip")
    report = dataset_rules.inspect_zip(str(path))
    assert not report.usable
    assert "not a readable zip" in report.problems[0]


def _mark_encrypted(path, name: str) -> None:
    """Set the 'encrypted' flag of one central-directory record (zipfile never writes it)."""
    data = bytearray(path.read_bytes())
    offset = data.find(b"PK\x01\x02")
    while offset != -1:
        name_length = struct.unpack_from("<H", data, offset + 28)[0]
        if data[offset + 46 : offset + 46 + name_length].decode() == name:
            struct.pack_into(
                "<H", data, offset + 8, struct.unpack_from("<H", data, offset + 8)[0] | 1
            )
        offset = data.find(b"PK\x01\x02", offset + 46)
    path.write_bytes(bytes(data))


def test_encrypted_and_duplicate_entries(tmp_path):
    path = make_zip(tmp_path / "d.zip", {**layout(), "train/001.cat/secret.jpg": jpeg_bytes()})
    with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate we add on purpose
        archive.writestr("train/001.cat/img_0.jpg", jpeg_bytes())
    _mark_encrypted(path, "train/001.cat/secret.jpg")
    report = dataset_rules.inspect_zip(str(path))
    assert any("secret.jpg" in p and "encrypted" in p for p in report.problems)
    assert any("img_0.jpg' appears 2 times" in p for p in report.problems)


def test_config_file_is_recognised_not_counted(tmp_path):
    report = inspect(tmp_path, {**layout(prefix="ds/"), "ds/sagedrop.json": b"{}"})
    assert report.has_config and report.usable and report.ignored_files == 0


def test_folder_datasets_refuse_symlinks(tmp_path):
    root = tmp_path / "ds"
    for name, data in layout().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "train" / "001.cat" / "link.jpg").symlink_to("/etc/hostname")
    report = dataset_rules.inspect_path(str(root))
    assert any("link.jpg" in p and "symbolic link" in p for p in report.problems)


def test_extract_writes_only_the_accepted_images(tmp_path):
    members = {**layout(prefix="ds/"), "ds/train/001.cat/readme.txt": b"hi"}
    archive = make_zip(tmp_path / "d.zip", members)
    report = dataset_rules.inspect_zip(str(archive))
    dataset_rules.extract_zip(str(archive), str(tmp_path / "out"), report)
    written = sorted(
        p.relative_to(tmp_path / "out").as_posix()
        for p in (tmp_path / "out").rglob("*")
        if p.is_file()
    )
    assert written == sorted(k for k in members if k.endswith(".jpg"))


def test_extract_refuses_a_dataset_with_problems(tmp_path):
    archive = make_zip(tmp_path / "d.zip", {**layout(), "../evil.jpg": b"x"})
    report = dataset_rules.inspect_zip(str(archive))
    with pytest.raises(ValueError, match="refusing to extract"):
        dataset_rules.extract_zip(str(archive), str(tmp_path / "out"), report)
    assert not (tmp_path / "evil.jpg").exists()
