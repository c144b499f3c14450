"""Dataset layout and safety rules, shared by every place that accepts a dataset.

The same rules run in the upload Lambda (from a zip's central directory, read through
ranged S3 requests), in ``sagedrop dataset check`` and in ``train.py`` before it touches a
single pixel. Keeping them in one stdlib-only module is what makes "the Lambda accepted it"
mean "training will accept it": ``sourcedir.tar.gz`` carries this package beside
``train.py``, so SageMaker's training container runs the very same code.

A dataset is the dogImages layout: ``train/<class>/*``, ``valid/<class>/*``,
``test/<class>/*``, optionally under one top-level folder. Only the entry names and the
sizes the archive declares are needed, which is why a zip can be judged before download.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "test": "test",
    "testing": "test",
}
CONFIG_NAME = "sagedrop.json"
# Archive debris that says nothing about the dataset: skipped without counting as a problem.
NOISE_PARTS = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"})
_LABEL_PREFIX = re.compile(r"^\d+[._\-\s]+")


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a hostile archive from exhausting a Lambda or a training host.

    The defaults admit dogImages (8,351 images, 1.1 GB) with a wide margin.
    """

    max_entries: int = 500_000
    max_total_bytes: int = 50 * 1024**3
    max_entry_bytes: int = 512 * 1024**2
    # Photos barely compress; a JPEG or PNG inflating more than this is a bomb, not an image.
    max_compression_ratio: float = 100.0
    # Small entries may compress well (a flat PNG); the ratio check starts above this size.
    ratio_check_min_bytes: int = 1024 * 1024
    # The same ratio over the whole archive, so many entries each just under the per-entry
    # threshold (400 x 1 MiB of zeros: 489 KB inflating to 419 MB) are caught together.
    max_archive_ratio: float = 100.0
    archive_ratio_min_bytes: int = 16 * 1024 * 1024
    min_classes: int = 2
    # A class with fewer training images than this is named in a warning (never refused).
    min_class_images: int = 5


@dataclass(frozen=True)
class Entry:
    """One archive member or file, as far as its name and declared sizes tell."""

    name: str
    size: int
    compressed_size: int | None = None
    is_dir: bool = False
    is_symlink: bool = False
    is_encrypted: bool = False
    # The CRC-32 the central directory declares (None for a folder's files, which would
    # have to be read to know it).
    crc: int | None = None


@dataclass
class DatasetReport:
    """What a dataset holds and what is wrong with it, in sentences a person can act on."""

    prefix: str = ""
    classes: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    files: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ignored_files: int = 0
    has_config: bool = False
    total_bytes: int = 0
    # What the names and declared CRC-32s tell of the data's quality (``_audit_listing``):
    # warnings with numbers, never problems.
    listing_audit: dict = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return not self.problems

    @property
    def labels(self) -> list[str]:
        return [label_for(folder) for folder in self.classes]

    @property
    def missing_splits(self) -> list[str]:
        return [split for split in SPLITS if split not in self.counts]

    def image_count(self, split: str | None = None) -> int:
        splits = [split] if split else list(self.counts)
        return sum(sum(self.counts.get(s, {}).values()) for s in splits)

    def summary(self) -> dict:
        """A JSON-friendly digest for notifications and logs (no per-file lists)."""
        return {
            "usable": self.usable,
            "classes": len(self.classes),
            "labels": self.labels,
            "images": {split: sum(per_class.values()) for split, per_class in self.counts.items()},
            "missing_splits": self.missing_splits,
            "ignored_files": self.ignored_files,
            "problems": list(self.problems),
            "warnings": list(self.warnings),
            "audit": dict(self.listing_audit),
        }


def label_for(folder: str) -> str:
    """``001.Affenpinscher`` → ``Affenpinscher``; a name that is only digits stays as it is."""
    stripped = _LABEL_PREFIX.sub("", folder)
    return stripped or folder


def comparable(name: str) -> str:
    """A name as a person reads it: Unicode NFC, case folded."""
    return unicodedata.normalize("NFC", name).casefold()


def is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def unsafe_reason(name: str) -> str | None:
    """Why an entry name could write outside the extraction folder, or None when it cannot."""
    if "\x00" in name:
        return "contains a NUL character"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    parts = re.split(r"[\\/]", name)
    if ".." in parts:
        return "climbs out of the dataset folder with '..'"
    return None


def entries_from_zip(archive: zipfile.ZipFile) -> list[Entry]:
    """Entries as the central directory declares them; no member data is read.

    This is why it also works on a zip opened over ranged S3 reads: ``ZipFile`` only reads
    the end-of-central-directory record and the directory itself when it opens.
    """
    entries = []
    for info in archive.infolist():
        mode = info.external_attr >> 16
        entries.append(
            Entry(
                name=info.filename,
                size=info.file_size,
                compressed_size=info.compress_size,
                is_dir=info.is_dir(),
                is_symlink=info.create_system == 3 and stat.S_ISLNK(mode),
                is_encrypted=bool(info.flag_bits & 0x1),
                crc=info.CRC,
            )
        )
    return entries


def entries_from_folder(root: str) -> list[Entry]:
    """Entries of a dataset folder, named relative to it with forward slashes."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if os.path.islink(full):
                entries.append(Entry(name=rel, size=0, is_symlink=True))
            elif name in filenames:
                entries.append(Entry(name=rel, size=os.path.getsize(full)))
    return entries


def inspect_zip(path_or_file, limits: Limits | None = None) -> DatasetReport:
    """Judge a zip from its central directory (a path or a seekable binary file object)."""
    try:
        with zipfile.ZipFile(path_or_file) as archive:
            entries = entries_from_zip(archive)
    except zipfile.BadZipFile as exc:
        return DatasetReport(problems=[f"The file is not a readable zip archive ({exc})."])
    return inspect_entries(entries, limits)


def inspect_path(path: str, limits: Limits | None = None) -> DatasetReport:
    """Judge a dataset given as a zip file or a folder."""
    if os.path.isdir(path):
        return inspect_entries(entries_from_folder(path), limits)
    if not os.path.exists(path):
        return DatasetReport(problems=[f"{path} does not exist."])
    return inspect_zip(path, limits)


def inspect_entries(entries: Iterable[Entry], limits: Limits | None = None) -> DatasetReport:
    """Apply every rule to a listing of entries and say what the dataset holds."""
    limits = limits or Limits()
    entries = list(entries)
    report = DatasetReport()
    _check_archive_safety(entries, limits, report)
    if report.problems:
        # A hostile archive gets no layout analysis: its names cannot be trusted.
        return report

    files = [e for e in entries if not e.is_dir and not _is_noise(e.name)]
    report.total_bytes = sum(e.size for e in files)
    report.prefix = _common_prefix([e.name for e in files])
    layout: dict[str, dict[str, list[str]]] = {}
    ignored = 0
    crcs: dict[str, tuple[int, int]] = {}
    for entry in files:
        if entry.name in (CONFIG_NAME, report.prefix + CONFIG_NAME):
            report.has_config = True
            continue
        rel = entry.name[len(report.prefix) :]
        parts = rel.split("/")
        split = SPLIT_ALIASES.get(parts[0].lower()) if len(parts) >= 3 else None
        if split is None or not is_image_name(rel):
            ignored += 1
            continue
        layout.setdefault(split, {}).setdefault(parts[1], []).append(entry.name)
        if entry.crc is not None and entry.size > 0:
            crcs[entry.name] = (entry.crc, entry.size)
    for split_files in layout.values():
        for names in split_files.values():
            names.sort()
    report.files = layout
    report.ignored_files = ignored
    report.counts = {s: {c: len(v) for c, v in layout[s].items()} for s in SPLITS if s in layout}
    _check_layout(report, limits)
    if report.usable:
        _audit_listing(report, crcs, limits)
    return report


def _check_archive_safety(entries: list[Entry], limits: Limits, report: DatasetReport) -> None:
    if len(entries) > limits.max_entries:
        report.problems.append(
            f"The archive has {len(entries):,} entries; the limit is {limits.max_entries:,}."
        )
        return
    total = compressed = 0
    seen: Counter[str] = Counter()
    for entry in entries:
        reason = unsafe_reason(entry.name)
        if reason:
            report.problems.append(f"Entry '{entry.name}' {reason}; it was refused.")
            continue
        if entry.is_symlink:
            report.problems.append(f"Entry '{entry.name}' is a symbolic link; links are refused.")
            continue
        if entry.is_encrypted:
            report.problems.append(f"Entry '{entry.name}' is encrypted; it cannot be read.")
            continue
        seen[entry.name.rstrip("/")] += 1
        total += entry.size
        compressed += entry.compressed_size if entry.compressed_size is not None else entry.size
        if entry.size > limits.max_entry_bytes:
            report.problems.append(
                f"Entry '{entry.name}' expands to {_human(entry.size)}, over the per-file limit "
                f"of {_human(limits.max_entry_bytes)}."
            )
        elif (
            entry.compressed_size is not None
            and entry.size >= limits.ratio_check_min_bytes
            and entry.size > limits.max_compression_ratio * max(entry.compressed_size, 1)
        ):
            ratio = entry.size / max(entry.compressed_size, 1)
            report.problems.append(
                f"Entry '{entry.name}' expands {ratio:,.0f}x ({_human(entry.compressed_size)} to "
                f"{_human(entry.size)}), over the {limits.max_compression_ratio:g}x limit: "
                "it looks like a zip bomb."
            )
    if total > limits.max_total_bytes:
        report.problems.append(
            f"The archive expands to {_human(total)}, over the limit of "
            f"{_human(limits.max_total_bytes)}."
        )
    elif total >= limits.archive_ratio_min_bytes and total > limits.max_archive_ratio * max(
        compressed, 1
    ):
        report.problems.append(
            f"The archive expands {total / max(compressed, 1):,.0f}x as a whole "
            f"({_human(compressed)} to {_human(total)}), over the "
            f"{limits.max_archive_ratio:g}x limit: it looks like a zip bomb."
        )
    for name, count in sorted(seen.items()):
        if count > 1:
            report.problems.append(f"Entry '{name}' appears {count} times in the archive.")


def _check_layout(report: DatasetReport, limits: Limits) -> None:
    counts = report.counts
    if "train" not in counts:
        where = f" under '{report.prefix}'" if report.prefix else ""
        report.problems.append(
            f"No 'train' folder with class subfolders of images was found{where}. Expected "
            "train/<class>/<image>, valid/<class>/<image> and test/<class>/<image>."
        )
        return
    train_classes = set(counts["train"])
    empty = sorted(c for c, n in counts["train"].items() if n == 0)
    for split in ("valid", "test"):
        if split not in counts:
            continue
        extra = sorted(set(counts[split]) - train_classes)
        lacking = sorted(train_classes - set(counts[split]))
        for name in extra:
            report.problems.append(
                f"Class '{name}' appears in '{split}' but has no training images in 'train'."
            )
        for name in lacking:
            report.problems.append(f"Class '{name}' is in 'train' but has no images in '{split}'.")
    for name in empty:
        report.problems.append(f"Class '{name}' has no training images.")
    report.classes = sorted(train_classes)
    if len(report.classes) < limits.min_classes:
        report.problems.append(
            f"Only {len(report.classes)} class(es) found in 'train'; at least "
            f"{limits.min_classes} are needed to train a classifier."
        )
    # 'Cat' and 'cat', or 'café' composed and decomposed, are one class to a person and
    # two to a file system: refuse rather than train two classes that mean the same.
    by_label: dict[str, list[str]] = {}
    for folder in report.classes:
        by_label.setdefault(comparable(label_for(folder)), []).append(folder)
    for folders in by_label.values():
        if len(folders) > 1:
            labels = sorted({label_for(f) for f in folders})
            how = (
                f"all give the label '{labels[0]}'"
                if len(labels) == 1
                else "give labels that differ only in case or Unicode normalisation "
                f"({', '.join(repr(label) for label in labels)})"
            )
            report.problems.append(f"Folders {', '.join(repr(f) for f in folders)} {how}.")
    missing = report.missing_splits
    if missing:
        report.warnings.append(
            f"No {' or '.join(repr(s) for s in missing)} split: it will be split off 'train' "
            "deterministically, stratified by class."
        )
    if report.ignored_files:
        report.warnings.append(
            f"{report.ignored_files} file(s) are not images in a <split>/<class>/ folder and "
            "will be ignored."
        )


EXAMPLES = 5  # duplicate pairs a warning names
IMBALANCE_WARNING = 10.0  # largest/smallest training class ratio that earns a warning


def _audit_listing(report: DatasetReport, crcs: dict[str, tuple[int, int]], limits: Limits) -> None:
    """Quality, from the listing alone (the upload Lambda never reads an image's bytes).

    Entries with the same CRC-32 and size are, all but certainly, the same file: one in
    ``valid`` or ``test`` with a twin in ``train`` is a leaked image, which the job leaves
    out of evaluation (``data_audit``). Imbalance is the largest over the smallest class
    per split. Nothing here refuses a dataset: the numbers go into warnings.
    """
    split_of = {name: split for split, per_class in report.files.items()
                for names in per_class.values() for name in names}  # fmt: skip
    by_content: dict[tuple[int, int], list[str]] = {}
    for name, key in crcs.items():
        if name in split_of:
            by_content.setdefault(key, []).append(name)
    leaked: dict[str, list[tuple[str, str]]] = {"valid": [], "test": []}
    within = 0
    for names in by_content.values():
        if len(names) < 2:
            continue
        names.sort()
        train = [n for n in names if split_of[n] == "train"]
        within += max(0, len(train) - 1)
        for name in names:
            if split_of[name] in leaked and train:
                leaked[split_of[name]].append((name, train[0]))
    imbalance = {}
    for split, per_class in report.counts.items():
        sizes = [n for n in per_class.values() if n > 0]
        if sizes:
            imbalance[split] = round(max(sizes) / min(sizes), 2)
    small = sorted(c for c, n in report.counts["train"].items() if n < limits.min_class_images)
    report.listing_audit = {
        "checked": "central directory" if crcs else "names only (no CRC-32 without an archive)",
        "leaked": {split: len(pairs) for split, pairs in leaked.items()},
        "leaked_examples": [list(pair) for pairs in leaked.values() for pair in pairs][:EXAMPLES],
        "duplicates_within_train": within,
        "imbalance": imbalance,
        "small_classes": small,
        "min_class_images": limits.min_class_images,
    }
    for split, pairs in leaked.items():
        if pairs:
            named = "; ".join(f"{_rel(report, a)} = {_rel(report, b)}" for a, b in pairs[:EXAMPLES])
            more = f" and {len(pairs) - EXAMPLES} more" if len(pairs) > EXAMPLES else ""
            report.warnings.append(
                f"{len(pairs)} of {report.image_count(split)} '{split}' image(s) are "
                f"byte-identical to a training image (same CRC-32 and size): {named}{more}. "
                'They are left out of evaluation unless sagedrop.json sets "leakage": "keep".'
            )
    if within:
        report.warnings.append(f"{within} training image(s) are byte-identical copies of another.")
    ratio = imbalance.get("train")
    if ratio is not None and ratio >= IMBALANCE_WARNING:
        counts = report.counts["train"]
        largest = max(counts, key=lambda c: counts[c])
        smallest = min(counts, key=lambda c: counts[c])
        report.warnings.append(
            f"The classes are imbalanced {ratio:g}:1 in 'train' ('{largest}' has "
            f"{counts[largest]} images, '{smallest}' {counts[smallest]}): accuracy favours "
            "the large classes; the per-class recall in the evaluation says by how much."
        )
    if small:
        listed = ", ".join(f"'{c}' ({report.counts['train'][c]})" for c in small[:10])
        more = f" and {len(small) - 10} more" if len(small) > 10 else ""
        report.warnings.append(
            f"{len(small)} class(es) have fewer than {limits.min_class_images} training "
            f"images: {listed}{more}."
        )


def _rel(report: DatasetReport, name: str) -> str:
    return name[len(report.prefix) :]


def _is_noise(name: str) -> bool:
    parts = name.split("/")
    return any(p in NOISE_PARTS or p.startswith("._") for p in parts)


def _common_prefix(names: list[str]) -> str:
    """The single top-level folder wrapping the dataset, if there is one (else "")."""
    tops = {n.split("/", 1)[0] for n in names if "/" in n}
    loose = [n for n in names if "/" not in n and n != CONFIG_NAME]
    if len(tops) != 1 or loose:
        return ""
    top = next(iter(tops))
    if top.lower() in SPLIT_ALIASES:
        return ""
    return top + "/"


def extract_zip(path: str, dest: str, report: DatasetReport) -> None:
    """Extract the images an inspected, usable report lists, and nothing else.

    Only names the rules accepted are written, each below ``dest``, and no member may
    inflate past the size the central directory declared (``zipfile`` stops at the
    declared size and checks the CRC), so a lying archive fails instead of filling a disk.
    """
    if not report.usable:
        raise ValueError(
            "refusing to extract a dataset with problems: " + "; ".join(report.problems)
        )
    wanted = {name for split in report.files.values() for names in split.values() for name in names}
    if report.has_config:
        wanted.update({CONFIG_NAME, report.prefix + CONFIG_NAME})
    root = os.path.realpath(dest)
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.filename not in wanted:
                continue
            target = os.path.realpath(os.path.join(root, info.filename))
            if not target.startswith(root + os.sep):
                raise ValueError(f"entry '{info.filename}' would land outside {dest}")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with archive.open(info) as source, open(target, "wb") as sink:
                while chunk := source.read(1 << 20):
                    sink.write(chunk)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"
