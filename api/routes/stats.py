"""Statistics: degradation breakdowns as JSON, CSV or Parquet (the same tables as `degsearch stats`)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from api.deps import StateDep, require_read, upload_dir
from api.schemas import StatsFormat, StatsGroup, StatsResponse

router = APIRouter(prefix="/v1", tags=["stats"], dependencies=[Depends(require_read)])

_MEDIA = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


@router.get(
    "/stats",
    response_model=StatsResponse,
    summary="Degradation statistics, optionally broken down",
    responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}},
)
def get_stats(
    state: StateDep,
    by: Annotated[str | None, Query(max_length=200, description="Breakdown, as for `degsearch stats --by`: channel, day, month, indexed_day, indexed_month or a recording attribute.")] = None,
    group: Annotated[StatsGroup, Query(description="Group segments by their label or their nearest cluster prototype.")] = "label",
    format: Annotated[StatsFormat, Query(description="json (default), csv or parquet.")] = "json",
) -> StatsResponse | Response:
    from retrieval.stats import compute_stats, export_stats

    df = compute_stats(state.store(), by=by or None, group=group)
    if format == "json":
        # pandas turns NaN into null and numpy/timestamps into JSON types.
        rows = json.loads(df.to_json(orient="records", date_format="iso"))
        totals = {k: float(v) for k, v in df.attrs.get("totals", {}).items()}
        return StatsResponse(by=by or None, group=group, columns=[str(c) for c in df.columns], rows=rows, totals=totals)
    with upload_dir() as tmp:  # export through the library so the CLI and API files are identical
        out = tmp / f"stats.{format}"
        export_stats(df, out, format)
        content = out.read_bytes()
    return Response(content, media_type=_MEDIA[format], headers={"Content-Disposition": f'attachment; filename="stats.{format}"'})
