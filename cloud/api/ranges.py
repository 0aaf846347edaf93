"""HTTP Range for objects the API streams from a bundle store that is not a local file (Starlette's
FileResponse does it for files): one `bytes=` range, as a device's resume sends, answered 206 with
Content-Range; a range past the end 416 with `Content-Range: bytes */size`. Several ranges, or a header this
does not read, get the whole object (200), which RFC 9110 allows and the device's downloader handles.
"""

from __future__ import annotations

import re

from fastapi import Request, status
from fastapi.responses import Response, StreamingResponse

from edgefleet.cloud.bundle_store import BundleStore

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """(start, end) inclusive for one satisfiable range; None for no (usable) range; False if unsatisfiable."""
    match = _RANGE.match((header or "").strip().replace(" ", ""))
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # the last N bytes
        length = int(last)
        return (max(0, size - length), size - 1) if length > 0 and size > 0 else False
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # invalid: ignored, the whole object
    return (start, end) if start < size else False


def ranged_response(request: Request, store: BundleStore, key: str, size: int, filename: str,
                    headers: dict[str, str]) -> Response:
    """The object under key, whole or the requested range, streamed from the store."""
    common = {**headers, "Accept-Ranges": "bytes", "Content-Disposition": f'attachment; filename="{filename}"'}
    wanted = byte_range(request.headers.get("range"), size)
    if wanted is False:
        return Response(status_code=status.HTTP_416_RANGE_NOT_SATISFIABLE,
                        headers={**common, "Content-Range": f"bytes */{size}"})
    if wanted is None:
        start, end, code = 0, size - 1, status.HTTP_200_OK
    else:
        (start, end), code = wanted, status.HTTP_206_PARTIAL_CONTENT
        common["Content-Range"] = f"bytes {start}-{end}/{size}"
    common["Content-Length"] = str(end - start + 1)
    body = store.read_range(key, start, end) if size > 0 else iter(())
    return StreamingResponse(body, status_code=code, media_type="application/gzip", headers=common)
