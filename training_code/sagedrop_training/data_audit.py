"""The pixel audit: duplicates within and across splits, leakage, label conflicts, imbalance.

Every image gets a ``Fingerprint`` from the decode training does anyway
(``data_pipeline.ImageFileDataset`` with ``fingerprints=True``, or ``fingerprint_all`` where
no decode pass comes first). Two images are

* **exact duplicates** when their files have the same SHA-256;
* **near duplicates** when their perceptual hashes (``imagehash.phash``: the 8x8
  low-frequency DCT of a 32x32 grey thumbnail, 64 bits) differ in at most ``NEAR_BITS``
  bits *and* their 8x8 colour thumbnails differ by at most ``THUMBNAIL_DISTANCE`` grey
  levels on average. The perceptual hash sees structure and not colour (a red and a green
  photo of one scene hash alike); the thumbnail sees colour and not fine structure; a
  re-encoded or slightly resized copy passes both, a different photo neither.

Near duplicates are found without comparing every pair: multi-index hashing (Norouzi et
al., 2012). The 64 bits are cut into ``BANDS`` bands of 16; two hashes within ``NEAR_BITS``
(6) bits are within ``NEAR_BITS // BANDS`` (1) bit of each other on at least one band
(pigeonhole), so an image is compared only with the images whose band value is its own or
one bit off it: 4 x 17 of 65,536 buckets a band. Buckets hold one image per look: an image
that matches none joins them as a new look; one that matches joins that look's group (a
copy of a copy is compared with the first of them). An image is compared with about
68 N / 65,536 others (8 at dogImages' 8,351 images, where all pairs are 4,175 an image),
and never with more than 68 x ``BUCKET_CAP``, even when every image looks alike: past
that the search grows linearly with the images.

Groups of duplicates (exact or near, transitively) then say what the dataset hides: a
``valid`` or ``test`` image in a group with a training image is *leaked* (the model saw it);
a group spanning two classes is a *label conflict*. Standard library, numpy and imagehash:
``sagedrop dataset check`` runs this very module before anything is uploaded.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import imagehash
import numpy as np
from PIL import Image

from sagedrop_serving.image_io import ImageDecodeError, decode_image

FORMAT = 1
AUDIT_FILE = "data_audit.json"
HASH_SIZE = 8  # phash of 8 x 8 = 64 bits
NEAR_BITS = 6  # Hamming distance at most this: a near-duplicate candidate
THUMBNAIL_SIDE = 8  # colour thumbnail compared to confirm a candidate
REDUCED_SIDE = 64  # both hashes are taken from this box-filtered reduction
THUMBNAIL_DISTANCE = 8.0  # mean absolute difference, 0-255 levels per channel
BANDS = 4  # 16-bit bands of the hash, each searched within NEAR_BITS // BANDS bits
BUCKET_CAP = 128  # looks a bucket keeps (bounds the search per image)
MIN_SIDE = 8  # an image smaller than this a side is too small to compare by content
LISTED = 50  # files a list in the audit names (the counts are always complete)
LEAKAGE_POLICIES = ("leave-out", "keep")
SPLIT_ORDER = ("train", "valid", "test")


@dataclass(frozen=True)
class Fingerprint:
    """What the audit needs of one image; ``error`` set when it cannot be read."""

    sha256: str = ""
    phash: int = 0
    thumbnail: bytes = b""
    width: int = 0
    height: int = 0
    error: str | None = None

    @property
    def comparable(self) -> bool:
        return self.error is None and min(self.width, self.height) >= MIN_SIDE

    def to_dict(self) -> dict:
        return {**asdict(self), "thumbnail": self.thumbnail.hex()}

    @classmethod
    def from_dict(cls, data: dict) -> Fingerprint:
        return cls(**{**data, "thumbnail": bytes.fromhex(data.get("thumbnail", ""))})


def fingerprint_image(path: str, draft_size: int | None) -> tuple[Fingerprint, Image.Image | None]:
    """The image's fingerprint and its decoded pixels (None when unreadable): the file is
    read once, hashed, and decoded exactly as training decodes it."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return Fingerprint(error=f"cannot be read ({exc.strerror or exc})"), None
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = decode_image(data, draft_size=draft_size)
    except ImageDecodeError as exc:
        return Fingerprint(sha256=digest, error=str(exc)), None
    return fingerprint_pixels(digest, image), image


def fingerprint_pixels(digest: str, image: Image.Image) -> Fingerprint:
    """Both hashes from one box-filtered 64 x 64 reduction (a tenth of the cost of hashing
    the full canvas; phash itself reduces to 32 x 32, the thumbnail to 8 x 8)."""
    reduced = image.resize((REDUCED_SIDE, REDUCED_SIDE), Image.Resampling.BOX)
    bits = imagehash.phash(reduced, hash_size=HASH_SIZE).hash.flatten()
    value = int.from_bytes(np.packbits(bits).tobytes(), "big")
    side = (THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    thumbnail = reduced.resize(side, Image.Resampling.BOX).tobytes()
    return Fingerprint(digest, value, thumbnail, image.width, image.height)


def _fingerprint_only(job: tuple[str, int | None]) -> Fingerprint:
    return fingerprint_image(*job)[0]


def fingerprint_all(
    paths: Sequence[str],
    draft_size: int | None,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[Fingerprint]:
    """Fingerprints of ``paths`` in order, decoded over ``workers`` processes (0: here).

    For where no decode pass comes first: the image-training path, ``sagedrop dataset
    check``. ``progress(done, total)`` is called as images finish.
    """
    jobs = [(path, draft_size) for path in paths]
    results: list[Fingerprint] = []
    if workers > 1 and len(jobs) > 64:
        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with context.Pool(workers) as pool:
            for fingerprint in pool.imap(_fingerprint_only, jobs, chunksize=32):
                results.append(fingerprint)
                if progress and len(results) % 100 == 0:
                    progress(len(results), len(jobs))
    else:
        for job in jobs:
            results.append(_fingerprint_only(job))
            if progress and len(results) % 100 == 0:
                progress(len(results), len(jobs))
    if progress:
        progress(len(results), len(jobs))
    return results


# --- finding the groups ----------------------------------------------------------------------
class _Groups:
    """Union-find over image indices: the duplicate groups, transitively."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _probes(value: int) -> list[list[int]]:
    """Per band, the bucket keys within ``NEAR_BITS // BANDS`` bits of ``value``'s own."""
    width = HASH_SIZE * HASH_SIZE // BANDS
    radius = NEAR_BITS // BANDS
    mask = (1 << width) - 1
    probes = []
    for band in range(BANDS):
        own = (value >> (band * width)) & mask
        keys = [own]
        if radius >= 1:
            keys += [own ^ (1 << bit) for bit in range(width)]
        if radius >= 2:
            keys += [own ^ (1 << a) ^ (1 << b) for a in range(width) for b in range(a)]
        probes.append(keys)
    return probes


def thumbnail_distance(a: bytes, b: bytes) -> float:
    """Mean absolute difference of two colour thumbnails, in 0-255 levels."""
    left = np.frombuffer(a, dtype=np.uint8).astype(np.int16)
    right = np.frombuffer(b, dtype=np.uint8).astype(np.int16)
    return float(np.abs(left - right).mean())


def duplicate_groups(
    prints: Sequence[Fingerprint], work: dict[str, int] | None = None
) -> tuple[list[list[int]], set[int]]:
    """Groups (sorted indices, two or more) of exact or near duplicates, and the indices
    joined to their group by an exact (byte-identical) match. ``work`` (when given)
    counts the hash comparisons made: what the bench reports per image."""
    groups = _Groups(len(prints))
    by_digest: dict[str, int] = {}
    exact: set[int] = set()
    representatives = []
    for i, fingerprint in enumerate(prints):
        if fingerprint.error is not None or not fingerprint.sha256:
            continue
        first = by_digest.setdefault(fingerprint.sha256, i)
        if first != i:
            groups.join(first, i)
            exact.update((first, i))
        elif fingerprint.comparable:
            representatives.append(i)
    buckets: list[dict[int, list[int]]] = [{} for _ in range(BANDS)]
    for i in representatives:
        value, thumbnail = prints[i].phash, prints[i].thumbnail
        probes = _probes(value)
        seen: set[int] = set()
        matched = False
        for keys, bucket in zip(probes, buckets, strict=True):
            for key in keys:
                for j in bucket.get(key, ()):
                    if j in seen:
                        continue
                    seen.add(j)
                    if work is not None:
                        work["comparisons"] = work.get("comparisons", 0) + 1
                    if (value ^ prints[j].phash).bit_count() <= NEAR_BITS and (
                        thumbnail_distance(thumbnail, prints[j].thumbnail) <= THUMBNAIL_DISTANCE
                    ):
                        groups.join(i, j)
                        matched = True
        if not matched:  # a new look: it stands for its kind in its own bucket of each band
            for keys, bucket in zip(probes, buckets, strict=True):
                members = bucket.setdefault(keys[0], [])
                if len(members) < BUCKET_CAP:
                    members.append(i)
    members_of: dict[int, list[int]] = {}
    for i in range(len(prints)):
        members_of.setdefault(groups.find(i), []).append(i)
    return sorted(g for g in members_of.values() if len(g) > 1), exact


# --- the audit -------------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditedImage:
    """One image as the audit names it."""

    split: str
    file: str  # as the dataset names it: test/001.cat/x.jpg
    label: str


@dataclass
class Audit:
    """``document`` is ``data_audit.json``; ``left_out`` the (split, index) pairs of the
    valid/test images taken out of evaluation."""

    document: dict
    left_out: dict[str, set[int]] = field(default_factory=dict)

    @property
    def headline(self) -> dict:
        return self.document["headline"]


def audit(
    images: dict[str, list[AuditedImage]],
    prints: dict[str, list[Fingerprint]],
    labels: Sequence[str],
    leakage: str = "leave-out",
    min_class_images: int = 5,
) -> Audit:
    """Judge the dataset from its fingerprints: every number counted, files named up to
    ``LISTED`` per list, and sentences a person can act on."""
    if leakage not in LEAKAGE_POLICIES:
        raise ValueError(f"leakage must be one of {', '.join(LEAKAGE_POLICIES)}, not {leakage!r}")
    flat: list[tuple[str, int]] = [
        (split, i) for split in SPLIT_ORDER for i in range(len(images.get(split, [])))
    ]
    flat_prints = [prints[split][i] for split, i in flat]
    groups, exact = duplicate_groups(flat_prints)
    sentences: list[str] = []

    leaked: dict[str, list[dict]] = {"valid": [], "test": []}
    within: dict[str, int] = dict.fromkeys(SPLIT_ORDER, 0)
    conflicts: list[dict] = []
    listed_groups: list[dict] = []
    exact_images = near_images = 0
    for group in groups:
        members = [flat[k] for k in group]
        named = [images[s][i] for s, i in members]
        kind = "exact" if all(k in exact for k in group) else "near"
        if kind == "exact":
            exact_images += len(group) - 1
        else:
            near_images += len(group) - 1
        for split in SPLIT_ORDER:
            in_split = sum(1 for s, _ in members if s == split)
            within[split] += max(0, in_split - 1)
        train = [image for image in named if image.split == "train"]
        for (split, index), image in zip(members, named, strict=True):
            if split in leaked and train:
                twin = next((t for t in train if t.label == image.label), train[0])
                leaked[split].append({"index": index, "file": image.file, "duplicates": twin.file})
        label_set = sorted({image.label for image in named})
        if len(label_set) > 1:
            conflicts.append({"labels": label_set, "files": [image.file for image in named][:10]})
        if len(listed_groups) < LISTED:
            listed_groups.append({
                "kind": kind,
                "images": len(group),
                "splits": sorted({image.split for image in named}, key=SPLIT_ORDER.index),
                "labels": label_set,
                "files": [image.file for image in named][:10],
            })  # fmt: skip
    unreadable = [
        {"file": images[s][i].file, "reason": prints[s][i].error}
        for s, i in flat
        if prints[s][i].error is not None
    ]
    tiny = [
        images[s][i].file
        for s, i in flat
        if prints[s][i].error is None and not prints[s][i].comparable
    ]
    classes = _class_counts(images, labels)
    imbalance = _imbalance(classes)
    small = [c["label"] for c in classes if c["train"] < min_class_images]
    counts = {split: len(images.get(split, [])) for split in SPLIT_ORDER}
    fractions = {s: (len(leaked[s]) / counts[s] if counts[s] else 0.0) for s in leaked}
    left_out = (
        {s: {entry["index"] for entry in leaked[s]} for s in leaked}
        if leakage == "leave-out"
        else {s: set() for s in leaked}
    )
    sentences += _leak_sentences(leaked, counts, fractions, leakage)
    sentences += _duplicate_sentences(flat_prints, groups, within, exact_images, near_images)
    sentences += _conflict_sentences(conflicts, images, prints, flat, groups)
    if unreadable:
        sentences.append(
            f"{len(unreadable)} image(s) cannot be read and are skipped, e.g. "
            f"{unreadable[0]['file']}: {unreadable[0]['reason']}."
        )
    if tiny:
        sentences.append(
            f"{len(tiny)} image(s) are smaller than {MIN_SIDE}x{MIN_SIDE} pixels (e.g. "
            f"{tiny[0]}): too small to tell apart by content, so they were only compared "
            "byte for byte; a model sees them upscaled."
        )
    if imbalance.get("train", 1.0) >= 10:
        sentences.append(
            f"The classes are imbalanced {imbalance['train']:g}:1 in 'train'; the "
            "evaluation's per-class recall says what that costs."
        )
    if small:
        sentences.append(
            f"{len(small)} class(es) have fewer than {min_class_images} training images: "
            + ", ".join(small[:10])
            + (" ..." if len(small) > 10 else "")
            + "."
        )
    headline = {
        "images": sum(counts.values()),
        "leaked": {s: len(v) for s, v in leaked.items()},
        "leaked_test_fraction": round(fractions["test"], 6),
        "left_out": {s: len(v) for s, v in left_out.items()},
        "exact_duplicates": exact_images,
        "near_duplicates": near_images,
        "label_conflicts": len(conflicts),
        "unreadable": len(unreadable),
        "imbalance_train": imbalance.get("train"),
        "label_error_candidates": None,
    }
    document = {
        "format": FORMAT,
        "method": {
            "exact": "SHA-256 of the file's bytes",
            "near": (
                f"imagehash.phash ({HASH_SIZE}x{HASH_SIZE} = {HASH_SIZE * HASH_SIZE} bits) "
                f"within {NEAR_BITS} bits, confirmed by {THUMBNAIL_SIDE}x{THUMBNAIL_SIDE} "
                f"colour thumbnails within {THUMBNAIL_DISTANCE:g} levels"
            ),
            "index": (
                f"multi-index hashing: {BANDS} bands of 16 bits, each searched within "
                f"{NEAR_BITS // BANDS} bit; an image is compared only with the looks in those "
                f"buckets (at most {BUCKET_CAP} a bucket)"
            ),
        },
        "leakage_policy": leakage,
        "images": counts,
        "headline": headline,
        "sentences": sentences,
        "leaked": {
            s: [{k: e[k] for k in ("file", "duplicates")} for e in v[:LISTED]]
            for s, v in leaked.items()
        },
        "left_out": {
            s: [images[s][i].file for i in sorted(v)][:LISTED] for s, v in left_out.items()
        },
        "duplicates_within_split": within,
        "groups": listed_groups,
        "label_conflicts": conflicts[:LISTED],
        "unreadable": unreadable[:LISTED],
        "too_small": tiny[:LISTED],
        "classes": classes,
        "imbalance": imbalance,
        "small_classes": small,
        "label_errors": {"status": "not-run", "reason": "not computed yet"},
    }
    return Audit(document, left_out)


def _class_counts(images: dict[str, list[AuditedImage]], labels: Sequence[str]) -> list[dict]:
    counts = {label: dict.fromkeys(SPLIT_ORDER, 0) for label in labels}
    for split in SPLIT_ORDER:
        for image in images.get(split, []):
            counts.setdefault(image.label, dict.fromkeys(SPLIT_ORDER, 0))[split] += 1
    return [{"label": label, **per_split} for label, per_split in counts.items()]


def _imbalance(classes: list[dict]) -> dict[str, float]:
    ratios = {}
    for split in SPLIT_ORDER:
        sizes = [c[split] for c in classes if c[split] > 0]
        if sizes:
            ratios[split] = round(max(sizes) / min(sizes), 2)
    return ratios


def _leak_sentences(leaked, counts, fractions, leakage: str) -> list[str]:
    sentences = []
    for split, entries in leaked.items():
        if not entries:
            continue
        what = (
            "left out of evaluation"
            if leakage == "leave-out"
            else 'kept in evaluation ("leakage": "keep"), so its numbers are optimistic'
        )
        every = (
            " Every one of them duplicates the training set."
            if (len(entries) == counts[split])
            else ""
        )
        sentences.append(
            f"{len(entries)} of {counts[split]} '{split}' image(s) ({fractions[split]:.1%}) "
            f"duplicate a training image, e.g. {entries[0]['file']} = "
            f"{entries[0]['duplicates']}: {what}.{every}"
        )
    return sentences


def _duplicate_sentences(flat_prints, groups, within, exact_images, near_images) -> list[str]:
    readable = sum(1 for p in flat_prints if p.error is None)
    if groups and len(groups) == 1 and len(groups[0]) == readable and readable > 1:
        return [f"All {readable} readable images are copies of one image: there is nothing "
                "to learn or to measure."]  # fmt: skip
    sentences = []
    if exact_images or near_images:
        sentences.append(
            f"{exact_images} image(s) are byte-identical copies and {near_images} near copies "
            f"(re-encoded, resized) of another image, in {len(groups)} group(s); within "
            + ", ".join(f"'{s}' {n}" for s, n in within.items())
            + "."
        )
    return sentences


def _conflict_sentences(conflicts, images, prints, flat, groups) -> list[str]:
    if not conflicts:
        return []
    sentences = [
        f"{len(conflicts)} group(s) of duplicates carry two or more labels (a label "
        f"conflict), e.g. {', '.join(conflicts[0]['files'][:2])} as "
        f"{' and '.join(conflicts[0]['labels'])}."
    ]
    # A class none of whose images is its own: every one duplicates another class's.
    owner: dict[int, set[str]] = {}
    for group in groups:
        labels_here = {images[flat[k][0]][flat[k][1]].label for k in group}
        for k in group:
            owner[k] = labels_here
    by_label: dict[str, list[int]] = {}
    for k, (split, i) in enumerate(flat):
        if prints[split][i].error is None:
            by_label.setdefault(images[split][i].label, []).append(k)
    for label, members in sorted(by_label.items()):
        if members and all(len(owner.get(k, {label})) > 1 for k in members):
            sentences.append(
                f"Every image of class '{label}' duplicates an image of another class: the "
                "class cannot be told apart."
            )
    return sentences


def named_images(
    splits: dict[str, list[tuple[str, int]]], labels: Sequence[str], root: str
) -> dict[str, list[AuditedImage]]:
    """The items of ``PreparedDataset.splits`` as the audit names them."""
    return {
        split: [
            AuditedImage(split, os.path.relpath(path, root) if root else path, labels[label])
            for path, label in items
        ]
        for split, items in splits.items()
    }
