"""``sagedrop dataset check``'s second half: the job's pixel audit, run here, with a
progress bar, before the dataset is uploaded (``offline_api.audit_dataset``)."""

from __future__ import annotations

import sys

from offline_api import audit_dataset, dataset_error  # training_code/'s door


class AuditError(ValueError):
    """The dataset cannot be audited; the message says why."""


def run(path: str, workers: int | None = None, quiet: bool = False) -> dict:
    """``data_audit.json`` of the dataset; a progress bar on stderr unless ``quiet``."""
    from tqdm import tqdm

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="img", desc="auditing", file=sys.stderr,
                       disable=quiet, leave=False)  # fmt: skip
        bar.update(done - bar.n)

    try:
        return audit_dataset(path, workers, progress)
    except dataset_error() as exc:
        raise AuditError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()


def print_audit(document: dict) -> None:
    """The audit as a person reads it: the headline numbers, then what they mean."""
    headline, images = document["headline"], document["images"]
    leaked, left_out = headline["leaked"], headline["left_out"]
    print("pixel audit (the job's own, decoded as training decodes):")
    print(f"  images: {images['train']} train, {images['valid']} valid, {images['test']} test")
    print(f"  leaked: {leaked['test']} test ({headline['leaked_test_fraction']:.1%}), "
          f"{leaked['valid']} valid; a job leaves {left_out['test'] + left_out['valid']} "
          "out of evaluation")  # fmt: skip
    print(f"  duplicates: {headline['exact_duplicates']} exact, {headline['near_duplicates']} "
          f"near; label conflicts: {headline['label_conflicts']}; unreadable: "
          f"{headline['unreadable']}")  # fmt: skip
    if headline.get("imbalance_train") is not None:
        print(f"  imbalance (train): {headline['imbalance_train']:g}:1")
    for sentence in document["sentences"]:
        print(f"  finding: {sentence}")
    errors = document.get("label_errors", {})
    if errors.get("status") == "skipped":
        print(f"  label errors: not looked for ({errors['reason']})")
