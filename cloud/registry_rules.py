"""What the registry requires of a bundle beyond what Bundle.verify checks, before anything is stored.

Bundle.verify (core/bundle.py with core/manifest_rules.py) has already refused a bad signature and a
manifest of the wrong structure: a version outside 1..2**63-1 (2**63 once reached SQLite and came back
as a 500), `interface: null`, a `rollback_build` that is not a boolean. On top of that the registry needs:

- `name`: a valid id (topics.check_id): it becomes a directory of the artifact store and part of URLs.
- `version` at most MAX_STORED_VERSION: the cloud's tables hold versions in SQL INTEGER columns
  (PostgreSQL's int4): one limit, core.bounded_json.SQL_INTEGER_MAX, for versions, seqs and counts.
- Versions only go up: a version not newer than the newest stored under the name is refused (409,
  naming that newest version), unless the signed manifest says `"rollback_build": true`, a build made
  on purpose to go back to, which may take any version not stored yet. A stored (name, version) is
  never replaced. (A device still installs an older version only with the signed rollback
  authorization a deployment sends; see core/ota.py.)
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.cloud.api.deps import ConflictError
from edgefleet.cloud.db import BundleRecord
from edgefleet.core.bounded_json import SQL_INTEGER_MAX
from edgefleet.core.errors import BundleError
from edgefleet.core.topics import check_id

ROLLBACK_BUILD = "rollback_build"
MAX_STORED_VERSION = SQL_INTEGER_MAX  # the bundles and deployments columns are SQL INTEGER


def check_storable(name: str, version: int) -> tuple[str, int]:
    """name and version when the registry can store them (a verified manifest's version is an int64)."""
    check_id(name, "bundle name")
    if version > MAX_STORED_VERSION:
        raise BundleError(f"bundle {name} v{version}: this registry stores versions up to {MAX_STORED_VERSION} "
                          f"(2**31-1, an SQL INTEGER column)")
    return name, version


def check_newer(session: Session, manifest: Mapping, name: str, version: int) -> None:
    """Raises ConflictError unless version is newer than every stored version of name (or the signed
    manifest is a rollback build); an exact (name, version) that exists is always refused."""
    if session.scalar(select(BundleRecord.id).where(BundleRecord.name == name, BundleRecord.version == version)):
        raise ConflictError(f"bundle {name} v{version} is in the registry already; versions are immutable")
    newest = session.scalar(select(func.max(BundleRecord.version)).where(BundleRecord.name == name))
    if newest is not None and version < newest and manifest.get(ROLLBACK_BUILD) is not True:
        raise ConflictError(f"bundle {name} v{version} is not newer than v{newest}, the newest in the registry: "
                            f"give the build a version above {newest}, or sign it with "
                            f'"{ROLLBACK_BUILD}": true if it is meant to go back to')
