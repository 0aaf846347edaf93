"""Labels that reach the cloud instead of the device: POST /api/v1/feedback, GET /api/v1/feedback.

The cloud keeps no per-request predictions (telemetry is summaries), so a label is queued here and the
label forwarder (cloud/label_forwarder.py) hands it to its device on the cmd topic; the device joins it to
the prediction its request id names, or the one it made closest to `timestamp` (within 0.5 s), and counts
it in its next telemetry window, from which `GET .../performance` reads it. 202: queued, with its id;
`GET /api/v1/feedback?device=` says whether it was sent.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from edgefleet.cloud.api.deps import SessionDep
from edgefleet.cloud.api.devices import get_device
from edgefleet.cloud.labels_store import CloudLabel

router = APIRouter(tags=["feedback"])
MAX_SAMPLES = 1024
Label = int | str


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = Field(min_length=1, max_length=64)
    request_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
    timestamp: float | None = Field(default=None, ge=0, le=1e11)  # unix seconds of the prediction
    label: Label | Annotated[list[Label], Field(max_length=MAX_SAMPLES)] | None = None
    value: float | Annotated[list[float], Field(max_length=MAX_SAMPLES)] | None = None

    @model_validator(mode="after")
    def one_of_each(self) -> FeedbackIn:
        if (self.request_id is None) == (self.timestamp is None):
            raise ValueError("give exactly one of request_id and timestamp")
        if (self.label is None) == (self.value is None):
            raise ValueError("give exactly one of label (a classifier) and value (regression)")
        values = self.value if isinstance(self.value, list) else [self.value]
        if self.value is not None and not all(math.isfinite(v) for v in values):
            raise ValueError("value must be finite")
        labels = self.label if isinstance(self.label, list) else [self.label]
        if self.label is not None and any(isinstance(v, str) and not 0 < len(v) <= 128 for v in labels):
            raise ValueError("a class name label must be 1 to 128 characters")
        return self


class FeedbackOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    device_id: str
    request_id: str | None
    timestamp: float | None
    received_at: float
    sent_at: float | None  # handed to the broker for the device; None: queued


@router.post("/feedback", status_code=status.HTTP_202_ACCEPTED, response_model=FeedbackOut)
def post_feedback(body: FeedbackIn, session: SessionDep) -> CloudLabel:
    device = get_device(session, body.device)  # 404 for an unknown device
    key = {"request_id": body.request_id} if body.request_id is not None else {"timestamp": body.timestamp}
    kind = {"label": body.label} if body.label is not None else {"value": body.value}
    row = CloudLabel(device_id=device.id, fleet=device.fleet, request_id=body.request_id, timestamp=body.timestamp,
                     item={**key, **kind})
    session.add(row)
    session.commit()
    return row


@router.get("/feedback", response_model=list[FeedbackOut])
def list_feedback(session: SessionDep, device: str,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[CloudLabel]:
    get_device(session, device)
    return list(session.scalars(select(CloudLabel).where(CloudLabel.device_id == device)
                                .order_by(CloudLabel.id.desc()).limit(limit)))
