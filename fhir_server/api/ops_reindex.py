"""``$reindex`` (this server's operation, after HAPI's): rebuild the search index of a tenant's
resources with its current SearchParameters (search.html#custom), as an asynchronous job.

* ``POST [base]/$reindex`` (``type`` = resource types, comma-separated or repeated; default every
  type) and ``POST [base]/[type]/$reindex``; optional ``batchSize`` (1–5000, default 500).
  Answers ``202 Accepted``, ``Content-Location: [base]/$reindex-status?job=ID`` and an informational
  OperationOutcome.
* ``GET [base]/$reindex-status?job=ID``: a ``Parameters`` with ``job``, ``kind``, ``status``
  (queued | running | completed | failed | cancelled), ``type``\\*, ``total``, ``done``,
  ``created``, ``started``, ``updated``, ``finished``, ``error``; header ``X-Progress: done/total``.
* ``POST [base]/$reindex-cancel?job=ID``: cancel a queued or running job (409 once it has ended).

Who may call them is the permission matrix's business (``routes.dispatch``, ``auth/permissions.py``:
``reindex*`` needs an explicit grant, by default the admin role's); anyone else 403. Jobs are the
tenant's: another tenant's id is 404.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fhir_server.api.deps import database, tenant_of
from fhir_server.api.operations import OperationCall, operation
from fhir_server.api.responses import base_url, fhir_response
from fhir_server.definitions.resource_types import RESOURCE_TYPES
from fhir_server.errors import BadRequest, Issue, ResourceNotFound, VersionConflict, operation_outcome
from fhir_server.jobs import store
from fhir_server.jobs.reindex import DEFAULT_BATCH, KIND, MAX_BATCH
from fhir_server.jobs.store import Job
from fhir_server.timeutil import format_instant


def _admin(request: Request, what: str) -> str:
    """The requester (the job's owner). ``what`` was authorized before the handler ran
    (``routes.dispatch`` → ``api/authorize.py``); development mode has no principal."""
    principal = request.scope.get("state", {}).get("principal")
    return str(principal.subject) if principal is not None else "development-mode"


def _job_id(call: OperationCall) -> uuid.UUID:
    raw = call.text("job")
    if not raw:
        raise BadRequest("The parameter 'job' (the job id) is required", expression="job")
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"'{raw}' is not a job id", expression="job") from None


def _types(call: OperationCall) -> list[str]:
    if call.level == "type":
        assert call.resource_type is not None
        return [call.resource_type]
    types = [t.strip() for v in call.texts("type") for t in v.split(",") if t.strip()]
    unknown = [t for t in types if t not in RESOURCE_TYPES]
    if unknown:
        raise BadRequest(f"type: {', '.join(unknown)} is not a FHIR R4 resource type", expression="type")
    return sorted(set(types)) if types else sorted(RESOURCE_TYPES)


def _batch_size(call: OperationCall) -> int:
    raw = call.text("batchSize")
    if raw is None:
        return DEFAULT_BATCH
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_BATCH:
        raise BadRequest(f"batchSize must be an integer from 1 to {MAX_BATCH}", expression="batchSize")
    return int(raw)


def _status_url(request: Request, job: Job) -> str:
    return f"{base_url(request)}/$reindex-status?job={job.id}"


def job_parameters(job: Job) -> dict[str, Any]:
    """A job's state as a ``Parameters`` resource."""
    params: list[dict[str, Any]] = [
        {"name": "job", "valueString": str(job.id)},
        {"name": "kind", "valueCode": job.kind},
        {"name": "status", "valueCode": job.status},
    ]
    params += [{"name": "type", "valueCode": t} for t in job.request.get("types", [])]
    for key in ("total", "done"):
        if isinstance(job.progress.get(key), int):
            params.append({"name": key, "valueInteger": job.progress[key]})
    for key in ("created", "started", "updated", "finished"):
        value = getattr(job, key)
        if value is not None:
            params.append({"name": key, "valueInstant": format_instant(value)})
    if job.error:
        params.append({"name": "error", "valueString": job.error})
    return {"resourceType": "Parameters", "parameter": params}


def _progress_headers(job: Job) -> dict[str, str]:
    done, total = job.progress.get("done"), job.progress.get("total")
    return {"X-Progress": f"{done}/{total}"} if total is not None else {}


@operation("reindex", levels=("system", "type"), methods=("POST",), affects_state=True)
async def reindex(call: OperationCall) -> Response:
    request = call.request
    owner = _admin(request, "$reindex")
    job_request = {"types": _types(call), "batchSize": _batch_size(call)}
    async with database(request).connection() as conn:
        job = await store.create(conn, tenant_of(request), KIND, owner=owner, request=job_request)
    runner = getattr(request.app.state, "jobs", None)
    if runner is not None:
        runner.wake()
    url = _status_url(request, job)
    note = Issue("information", "informational", f"Reindex job {job.id} is queued; its status is at {url}")
    return fhir_response(request, operation_outcome([note]), 202, {"Content-Location": url})


@operation("reindex-status", levels=("system",), methods=("GET",))
async def reindex_status(call: OperationCall) -> Response:
    request = call.request
    _admin(request, "$reindex-status")
    job_id = _job_id(call)
    async with database(request).connection() as conn:
        job = await store.get(conn, tenant_of(request), job_id)
    if job is None or job.kind != KIND:
        raise ResourceNotFound(f"No reindex job {job_id}", expression="job")
    return fhir_response(request, job_parameters(job), 200, _progress_headers(job))


@operation("reindex-cancel", levels=("system",), methods=("POST",), affects_state=True)
async def reindex_cancel(call: OperationCall) -> Response:
    request = call.request
    _admin(request, "$reindex-cancel")
    job_id = _job_id(call)
    tenant = tenant_of(request)
    async with database(request).connection() as conn:
        job = await store.cancel(conn, tenant, job_id, KIND)
        if job is None:
            job = await store.get(conn, tenant, job_id)
            if job is None or job.kind != KIND:
                raise ResourceNotFound(f"No reindex job {job_id}", expression="job")
            raise VersionConflict(f"Reindex job {job_id} has already ended ({job.status})")
    return fhir_response(request, job_parameters(job), 200)
