"""The job-side library: rundock's standard-library files, put on the job's PYTHONPATH.

Only these files are exposed to the job, never the submitter's site-packages,
so the job's own interpreter and packages stay exactly the user's.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

import rundock

_FILES = ("__init__.py", "states.py", "context/__init__.py", "context/journal.py", "context/names.py",
          "context/run.py")


def ensure_job_lib(root: str) -> str:
    """A folder holding the job-side ``rundock`` package, built once per content; return it."""
    package = os.path.dirname(os.path.abspath(rundock.__file__))
    digest = hashlib.sha256()
    contents = {}
    for rel in _FILES:
        with open(os.path.join(package, rel), "rb") as fh:
            contents[rel] = fh.read()
        digest.update(rel.encode() + b"\0" + contents[rel])
    target = os.path.join(root, digest.hexdigest()[:16])
    if os.path.isdir(target):
        return target
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(dir=root, prefix=".building-")
    for rel, data in contents.items():
        path = os.path.join(staging, "rundock", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    try:
        os.rename(staging, target)
    except OSError:  # another agent built it first
        shutil.rmtree(staging, ignore_errors=True)
    return target
