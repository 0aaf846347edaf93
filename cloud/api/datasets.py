"""Datasets over HTTP (cloud/dataset_store.py holds the rules), all behind the admin token:

- `POST /api/v1/datasets` {"name", "fleet"?, "device"?, "model"?, "version"?, "since"?, "until"?, "slice"?,
  "labelled_only"?}: freezes the next version of the named dataset from the captures the filter selects
  (201 with its record; 400 for an empty or inconsistent selection, 422 for a malformed filter).
- `POST /api/v1/datasets/count` {the same filter, no name}: what freezing it now would hold ({"samples",
  "rows", "unlabelled"}), nothing stored.
- `GET /api/v1/datasets?name=`: every version (no member lists).
- `GET /api/v1/datasets/{name}/{version}?samples=true`: one version ("latest" or a number), with its
  member list when asked.
- `GET /api/v1/datasets/{name}/{version}/export`: the .npz (cloud/loop/eval_data.py's layout), its
  re-computed fingerprint in `X-Edgefleet-Fingerprint`; 409 when retention deleted any of its samples.
"""

from __future__ import annotations

import io
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, status
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from edgefleet.cloud.api.deps import SessionDep, SessionsDep
from edgefleet.cloud.dataset_store import (
    DatasetFilter,
    count_selection,
    create_dataset,
    describe,
    export_arrays,
    get_dataset,
    list_datasets,
)
from edgefleet.core.topics import ID_PATTERN, check_id

router = APIRouter(tags=["datasets"])
ID = ID_PATTERN.pattern


class FilterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fleet: str | None = Field(default=None, pattern=ID)
    device: str | None = Field(default=None, pattern=ID)
    model: str | None = Field(default=None, min_length=1, max_length=128)
    version: int | None = Field(default=None, ge=0, le=2**31 - 1)
    since: float | None = Field(default=None, ge=0, le=1e11)
    until: float | None = Field(default=None, ge=0, le=1e11)
    slice: str | None = Field(default=None, min_length=1, max_length=64)
    labelled_only: bool = False


class DatasetIn(FilterIn):
    name: str = Field(pattern=ID)


@router.post("/datasets", status_code=status.HTTP_201_CREATED)
def post_dataset(body: DatasetIn, session: SessionDep) -> dict:
    where = DatasetFilter(**body.model_dump(exclude={"name"}))
    return describe(create_dataset(session, body.name, where))


@router.post("/datasets/count")
def post_count(body: FilterIn, session: SessionDep) -> dict:
    return count_selection(session, DatasetFilter(**body.model_dump()))


@router.get("/datasets")
def get_datasets(session: SessionDep, name: str | None = None) -> list[dict]:
    return [describe(record) for record in list_datasets(session, None if name is None else check_id(name, "name"))]


@router.get("/datasets/{name}/{version}")
def get_one(name: str, version: str, session: SessionDep,
            samples: Annotated[bool, Query(description="include the member list")] = False) -> dict:
    return describe(get_dataset(session, check_id(name, "dataset name"), version), with_samples=samples)


@router.get("/datasets/{name}/{version}/export")
async def export(name: str, version: str, sessions: SessionsDep) -> Response:
    def build() -> tuple[bytes, str]:
        with sessions() as session:
            arrays, fingerprint = export_arrays(session, get_dataset(session, check_id(name, "dataset name"),
                                                                     version))
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue(), fingerprint

    content, fingerprint = await run_in_threadpool(build)
    return Response(content, media_type="application/octet-stream",
                    headers={"X-Edgefleet-Fingerprint": fingerprint})
