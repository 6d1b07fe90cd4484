"""Bulk Data Access 2.0 ``$export`` (https://hl7.org/fhir/uv/bulkdata/export.html): kick-off,
status, cancel and the output files. The work is the ``export`` job (``fhir_server.bulk.export``).

* Kick-off: ``GET|POST [base]/$export``, ``[base]/Patient/$export``, ``[base]/Group/[id]/$export``
  with ``Prefer: respond-async`` (required) and ``Accept: application/fhir+json`` (or none).
  Parameters ``_outputFormat`` (``application/fhir+ndjson``, ``application/ndjson``, ``ndjson``),
  ``_since``, ``_type``, ``_typeFilter``, and (POST, Patient/Group level) ``patient``.
  ``202 Accepted`` with ``Content-Location: [base]/$export-status?job=ID``. Bad parameters → 400
  OperationOutcome; ``_elements`` and ``includeAssociatedData`` are not supported: ignored, or 400
  under ``Prefer: handling=strict``.
* Status: ``GET [base]/$export-status?job=ID`` → ``202`` with ``X-Progress`` and ``Retry-After``
  while queued or running; ``200`` with the manifest (``application/json``) and ``Expires`` when
  complete; ``500`` with an OperationOutcome if the job failed; ``404`` for an unknown or cancelled job.
* Cancel: ``DELETE [base]/$export-status?job=ID`` → ``202``; its files are removed.
* Files: ``GET [base]/$export-file?job=ID&file=NAME`` → ``application/fhir+ndjson``, streamed.

Jobs and files belong to the requester: the same tenant and the same token subject
(``requiresAccessToken`` is true unless the server runs in development mode). Anyone else gets
404, as if the job did not exist.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from fhir_server.api.authorize import narrow_types
from fhir_server.api.deps import access_of, actor_of, database, tenant_of
from fhir_server.api.operations import OperationCall, operation
from fhir_server.api.responses import base_url, fhir_response, prefer_strict
from fhir_server.auth.visibility import visible_binds
from fhir_server.bulk import export as bulk
from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.errors import BadRequest, Issue, ResourceNotFound, operation_outcome
from fhir_server.jobs import store
from fhir_server.jobs.store import Job
from fhir_server.search.compile import build_where
from fhir_server.search.query_values import split_list
from fhir_server.search.ranges import date_range
from fhir_server.timeutil import format_instant, http_date, now

OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
NDJSON = "application/fhir+ndjson"
# _typeFilter: several queries, comma-separated (commas inside a query are %2C-encoded)
_QUERY_SPLIT = re.compile(r",(?=[A-Z][A-Za-z]+\?)")


def _requester(request: Request) -> str:
    """The job owner: the agent of the audit trail (the token's subject, or "development-mode")."""
    return actor_of(request).agent


def _check_headers(request: Request) -> None:
    prefer = request.headers.get("prefer", "").replace(" ", "").lower()
    if "respond-async" not in prefer:
        raise BadRequest("$export is asynchronous: send the header 'Prefer: respond-async'", expression="Prefer")
    accept = request.headers.get("accept")
    if accept and not any(
        part.split(";")[0].strip() in ("application/fhir+json", "application/json", "*/*") for part in accept.split(",")
    ):
        raise BadRequest("$export answers in application/fhir+json (Accept)", expression="Accept")


def _types(call: OperationCall, level: str) -> list[str]:
    asked = split_list(call.texts("_type"))
    unknown = [t for t in asked if t not in RESOURCE_TYPES]
    if unknown:
        raise BadRequest(f"_type: {', '.join(unknown)} is not a FHIR R4 resource type", expression="_type")
    allowed = sorted(RESOURCE_TYPES) if level == "system" else bulk.patient_types()
    if asked:
        outside = [t for t in asked if t not in allowed]
        if outside:
            raise BadRequest(
                f"_type: {', '.join(outside)} cannot be in a Patient compartment export", expression="_type"
            )
        return sorted(set(asked))
    return allowed


def _type_filters(call: OperationCall, types: list[str]) -> dict[str, list[str]]:
    filters: dict[str, list[str]] = {}
    for raw in call.texts("_typeFilter"):
        for item in _QUERY_SPLIT.split(raw):
            rtype, sep, query = item.partition("?")
            if not sep or rtype not in RESOURCE_TYPES:
                raise BadRequest(f"_typeFilter '{item}' is not Type?query", expression="_typeFilter")
            if rtype not in types:
                raise BadRequest(f"_typeFilter '{item}': {rtype} is not among the exported types", expression="_typeFilter")
            where = build_where(rtype, bulk.query_pairs(query))  # InvalidSearch (400) now, not in the job
            if where.warnings:  # an ignored criterion would export more than was asked for
                raise BadRequest(f"_typeFilter '{item}': {where.warnings[0].diagnostics}", expression="_typeFilter")
            filters.setdefault(rtype, []).append(query)
    return filters


def _patients(call: OperationCall) -> list[str] | None:
    values = call.all("patient")
    if not values:
        return None
    ids = []
    for value in values:
        ref = value.get("valueReference", {}).get("reference") if isinstance(value, dict) else value
        if not isinstance(ref, str) or not ref.startswith("Patient/") or len(ref.split("/")) != 2:
            raise BadRequest("patient must be a reference Patient/[id]", expression="patient")
        ids.append(ref.split("/")[1])
    return ids


async def _group_members(request: Request, group_id: str) -> list[str]:
    binds: dict[str, Any] = {"t": tenant_of(request), "id": group_id}
    visible = visible_binds(access_of(request), "r", binds)  # a Group the caller may not see is unknown
    async with database(request).connection() as conn:
        cur = await conn.execute(
            "SELECT r.deleted, r.content -> 'member' FROM resource r WHERE r.tenant_id = %(t)s AND r.resource_type = 'Group'"
            " AND r.id = %(id)s" + (f" AND {visible}" if visible else ""),
            binds,
        )
        row = await cur.fetchone()
    if row is None or row[0]:
        raise ResourceNotFound(f"Group/{group_id} is not known")
    members = []
    for member in row[1] or []:
        ref = (member.get("entity") or {}).get("reference", "")
        if ref.startswith("Patient/") and not member.get("inactive"):
            members.append(ref.split("/", 1)[1])
    return members


@operation("export", levels=("system", "type", "instance"), types=None, methods=("GET", "POST"))
async def kick_off(call: OperationCall) -> Response:
    request = call.request
    if call.level == "type" and call.resource_type != "Patient":
        raise ResourceNotFound(f"$export is defined on the system, Patient and Group/[id], not {call.resource_type}")
    if call.level == "instance" and call.resource_type != "Group":
        raise ResourceNotFound(f"$export is defined on the system, Patient and Group/[id], not {call.resource_type}/[id]")
    _check_headers(request)
    fmt = call.text("_outputFormat")
    if fmt is not None and fmt not in OUTPUT_FORMATS:
        raise BadRequest(f"_outputFormat '{fmt}' is not supported; use {NDJSON}", expression="_outputFormat")
    level = {"system": "system", "type": "patient", "instance": "group"}[call.level]
    since = call.text("_since")
    if since is not None:
        try:
            since_at = date_range(since.replace(" ", "+"))[0]
        except ValueError:
            raise BadRequest(f"_since '{since}' is not a FHIR instant", expression="_since") from None
    types = narrow_types(request, _types(call, level), asked=bool(call.texts("_type")))
    ignored = [name for name in ("_elements", "includeAssociatedData") if call.first(name) is not None]
    if ignored and prefer_strict(request):
        raise BadRequest(f"{', '.join(ignored)} is not supported by this server", expression=ignored[0])
    patients = _patients(call)
    if level == "system" and patients is not None:
        raise BadRequest("patient is a parameter of Patient and Group level exports", expression="patient")
    if level == "group":
        assert call.resource_id is not None
        members = await _group_members(request, call.resource_id)
        patients = members if patients is None else [p for p in patients if p in set(members)]
    settings = request.app.state.settings
    job_request: dict[str, Any] = {
        "level": level,
        "group": call.resource_id if level == "group" else None,
        "patients": patients,
        "types": types,
        "since": since_at.isoformat() if since is not None else None,
        "typeFilters": _type_filters(call, types),
        "transactionTime": now().isoformat(),
        "request": base_url(request) + request.url.path.removeprefix("/fhir") + (f"?{request.url.query}" if request.url.query else ""),
        "access": access_of(request).to_json(),  # the job exports only what the requester may see
        "fileMaxBytes": settings.export_file_max_bytes,
        "fileMaxResources": settings.export_file_max_resources,
        "ignored": ignored,
    }
    async with database(request).connection() as conn:
        job = await store.create(conn, tenant_of(request), bulk.KIND, owner=_requester(request), request=job_request)
    runner = getattr(request.app.state, "jobs", None)
    if runner is not None:
        runner.wake()
    url = f"{base_url(request)}/$export-status?job={job.id}"
    note = Issue("information", "informational", f"Export job {job.id} accepted; poll {url}")
    return fhir_response(request, operation_outcome([note]), 202, {"Content-Location": url})


async def _own_job(call: OperationCall) -> Job:
    raw = call.text("job") or call.text("_jobId")
    try:
        job_id = uuid.UUID(raw or "")
    except ValueError:
        raise BadRequest("The parameter 'job' (the export job id) is required", expression="job") from None
    async with database(call.request).connection() as conn:
        job = await store.get(conn, tenant_of(call.request), job_id)
    if job is None or job.kind != bulk.KIND or job.owner != _requester(call.request) or job.status == "cancelled":
        raise ResourceNotFound(f"No export job {job_id}", expression="job")
    return job


def _manifest(request: Request, job: Job) -> dict[str, Any]:
    files = (job.result or {}).get("files", [])
    base = base_url(request)
    output = [
        {"type": f["type"], "url": f"{base}/$export-file?{urlencode({'job': str(job.id), 'file': f['name']})}", "count": f["count"]}
        for f in files
    ]
    manifest: dict[str, Any] = {
        "transactionTime": format_instant(datetime.fromisoformat(job.request["transactionTime"])),
        "request": job.request["request"],
        "requiresAccessToken": not request.app.state.settings.dev_mode,
        "output": output,
        "error": [],
    }
    if job.request.get("ignored"):
        manifest["extension"] = {"ignoredParameters": job.request["ignored"]}
    return manifest


@operation("export-status", levels=("system",), methods=("GET", "DELETE"))
async def status(call: OperationCall) -> Response:
    request = call.request
    job = await _own_job(call)
    if request.method == "DELETE":
        async with database(request).connection() as conn:
            # a running job stops at its next checkpoint; a finished one is "done with" (its files go)
            await conn.execute(
                "UPDATE job SET status = 'cancelled', finished = coalesce(finished, now()), updated = now(), "
                "expires = now() + interval '1 day' WHERE tenant_id = %s AND id = %s AND kind = %s",
                (job.tenant_id, job.id, bulk.KIND),
            )
        await bulk.delete_files(job.result, job.checkpoint)
        note = Issue("information", "informational", f"Export job {job.id} is cancelled; its files are deleted")
        return fhir_response(request, operation_outcome([note]), 202)
    if job.status in ("queued", "running"):
        exported = job.progress.get("exported", 0)
        where = f" ({job.progress['type']})" if job.progress.get("type") else ""
        headers = {"X-Progress": f"{job.status}: {exported} resources exported{where}", "Retry-After": "2"}
        return Response(status_code=202, headers=headers)
    if job.status == "failed":
        issue = Issue("error", "exception", f"Export job {job.id} failed: {job.error or 'unknown error'}")
        return fhir_response(request, operation_outcome([issue]), 500)
    headers = {"Expires": http_date(job.expires)} if job.expires else {}
    return Response(orjson.dumps(_manifest(request, job)), 200, headers, media_type="application/json")


@operation("export-file", levels=("system",), methods=("GET",))
async def output_file(call: OperationCall) -> Response:
    job = await _own_job(call)
    name = call.text("file")
    found = next((f for f in (job.result or {}).get("files", []) if f["name"] == name), None)
    if job.status != "completed" or found is None:
        raise ResourceNotFound(f"Export job {job.id} has no file '{name}'", expression="file")
    chunks = await bulk.blob_store().open(found["key"])
    headers = {"Content-Length": str(found["size"])}
    return StreamingResponse(chunks, 200, headers, media_type=NDJSON)

