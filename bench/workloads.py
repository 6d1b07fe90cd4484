"""FHIR workloads for loadgen.py: picklable factories, ``factory(conn_index) -> workload``.

Built in the load-generator process; every connection gets its own workload (own RNG, own state).
"""

from __future__ import annotations

import random
from typing import Any

import orjson
from loadgen import build_request, header

_FAMILY = ["Sharma", "Patel", "Iyer", "Nair", "Reddy", "Khan", "Das", "Menon", "Gupta", "Singh", "Chalmers", "Okafor"]
_GIVEN = ["Aarav", "Diya", "Ishaan", "Meera", "Rohan", "Anaya", "Kabir", "Saanvi", "Peter", "Grace", "Arjun", "Lakshmi"]
_CITY = [("Pune", "MH", "411001"), ("Kochi", "KL", "682001"), ("Chennai", "TN", "600001"), ("Jaipur", "RJ", "302001")]


def realistic_patient(rng: random.Random, serial: int) -> dict[str, Any]:
    """A Patient as a registration desk would send it: identifier, name, telecom, address, birthDate."""
    city, state, pin = rng.choice(_CITY)
    given = rng.choice(_GIVEN)
    family = rng.choice(_FAMILY)
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "use": "usual",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                "system": "urn:oid:2.16.840.1.113883.19.5",
                "value": f"MRN-{serial:09d}",
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given, rng.choice(_GIVEN)]}],
        "telecom": [
            {"system": "phone", "value": f"+91 9{rng.randrange(10**9):09d}", "use": "mobile"},
            {"system": "email", "value": f"{given.lower()}.{family.lower()}{serial}@example.org", "use": "home"},
        ],
        "gender": rng.choice(["male", "female"]),
        "birthDate": f"{rng.randint(1930, 2023)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "address": [
            {
                "use": "home",
                "line": [f"{rng.randint(1, 400)} MG Road"],
                "city": city,
                "state": state,
                "postalCode": pin,
                "country": "IN",
            }
        ],
    }


_JSON_HEADERS = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}


class _Create:
    def __init__(self, host: str, port: int, path: str, rng: random.Random, serial0: int) -> None:
        self.host, self.port, self.path, self.rng, self.serial = host, port, path, rng, serial0

    def request(self) -> bytes:
        self.serial += 1
        body = orjson.dumps(realistic_patient(self.rng, self.serial))
        return build_request("POST", self.host, self.port, self.path, body, _JSON_HEADERS)

    def response(self, status: int, head: bytes, body: bytes) -> None:
        pass


class CreatePatients:
    """POST [base]/Patient with a fresh realistic Patient each time."""

    def __init__(self, host: str, port: int, base_path: str = "/fhir", seed: int = 1) -> None:
        self.host, self.port, self.path, self.seed = host, port, f"{base_path}/Patient", seed

    def __call__(self, conn_index: int) -> _Create:
        return _Create(self.host, self.port, self.path, random.Random(self.seed * 1000 + conn_index),
                       (self.seed * 1000 + conn_index) * 10_000_000)


class _Read:
    def __init__(self, prefix: str, ids: list[str], rng: random.Random) -> None:
        self.prefix, self.ids, self.rng = prefix, ids, rng

    def request(self) -> bytes:
        return self.prefix + self.rng.choice(self.ids) + b" HTTP/1.1\r\n" + self.rest  # type: ignore[operator]

    def response(self, status: int, head: bytes, body: bytes) -> None:
        pass


class RandomReads:
    """GET [base]/Patient/{id} with an id drawn at random (uniformly) from ``ids``."""

    def __init__(self, host: str, port: int, ids: list[str], base_path: str = "/fhir", seed: int = 2) -> None:
        self.host, self.port, self.ids, self.base, self.seed = host, port, ids, base_path, seed
        self._ids: list[bytes] | None = None

    def __call__(self, conn_index: int) -> _Read:
        if self._ids is None:
            self._ids = [i.encode() for i in self.ids]  # shared by every connection
        w = _Read(f"GET {self.base}/Patient/".encode(), self._ids, random.Random(self.seed * 1000 + conn_index))
        w.rest = f"Host: {self.host}:{self.port}\r\nAccept: application/fhir+json\r\n\r\n".encode()  # type: ignore[attr-defined]
        return w


class _Update:
    """Owns one Patient; PUTs it with If-Match of the version it last saw (resyncs with a GET after a 412)."""

    def __init__(self, host: str, port: int, base: str, resource_id: str, version: int, rng: random.Random) -> None:
        self.host, self.port, self.base, self.id, self.version, self.rng = host, port, base, resource_id, version, rng
        self.n = 0
        self.resync = False

    def request(self) -> bytes:
        path = f"{self.base}/Patient/{self.id}"
        if self.resync:
            return build_request("GET", self.host, self.port, path, headers={"Accept": "application/fhir+json"})
        self.n += 1
        patient = realistic_patient(self.rng, self.n)
        patient = {"resourceType": "Patient", "id": self.id, **{k: v for k, v in patient.items() if k != "resourceType"}}
        headers = dict(_JSON_HEADERS, **{"If-Match": f'W/"{self.version}"'})
        return build_request("PUT", self.host, self.port, path, orjson.dumps(patient), headers)

    def response(self, status: int, head: bytes, body: bytes) -> None:
        etag = header(head, b"etag")
        if status in (200, 201) and etag:
            self.version = int(etag.removeprefix(b"W/").strip(b'"'))
            self.resync = False
        else:
            self.resync = status == 412


class IfMatchUpdates:
    """Connection i owns ``owned[i] = (id, current version)`` and updates it with If-Match."""

    def __init__(self, host: str, port: int, owned: list[tuple[str, int]], base_path: str = "/fhir", seed: int = 3) -> None:
        self.host, self.port, self.owned, self.base, self.seed = host, port, owned, base_path, seed

    def __call__(self, conn_index: int) -> _Update:
        rid, version = self.owned[conn_index]
        return _Update(self.host, self.port, self.base, rid, version, random.Random(self.seed * 1000 + conn_index))


# ---- upserts: plain vs conditional update (bench_upsert.py) -------------------------------------
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.19.5"
MRN_QUERY = MRN_SYSTEM.replace(":", "%3A")  # percent-encoded in a request target


class _Upsert:
    """Cycles over its own Patients ``[(id, mrn), ...]``: each request a new version of the next one,
    as ``PUT Patient/{id}`` (plain) or ``PUT Patient?identifier=system|mrn`` (conditional)."""

    def __init__(self, host: str, port: int, base: str, owned: list[tuple[str, str]], conditional: bool,
                 rng: random.Random) -> None:
        self.host, self.port, self.base, self.owned, self.conditional, self.rng = host, port, base, owned, conditional, rng
        self.i = 0

    def request(self) -> bytes:
        rid, mrn = self.owned[self.i % len(self.owned)]
        self.i += 1
        patient = realistic_patient(self.rng, int(mrn.removeprefix("MRN-")))
        if self.conditional:
            path = f"{self.base}/Patient?identifier={MRN_QUERY}%7C{mrn}"
        else:
            path = f"{self.base}/Patient/{rid}"
            patient = {"resourceType": "Patient", "id": rid, **{k: v for k, v in patient.items() if k != "resourceType"}}
        return build_request("PUT", self.host, self.port, path, orjson.dumps(patient), _JSON_HEADERS)

    def response(self, status: int, head: bytes, body: bytes) -> None:
        pass


class Upserts:
    """Connection i updates the Patients ``owned[i::connections]`` (disjoint sets: no two connections
    write the same Patient), plain or conditional. The Patients carry ``identifier`` MRN_SYSTEM|MRN-n."""

    def __init__(self, host: str, port: int, patients: list[tuple[str, str]], connections: int, *,
                 conditional: bool, base_path: str = "/fhir", seed: int = 5) -> None:
        self.host, self.port, self.patients, self.connections = host, port, patients, connections
        self.conditional, self.base, self.seed = conditional, base_path, seed

    def __call__(self, conn_index: int) -> _Upsert:
        owned = self.patients[conn_index :: self.connections]
        return _Upsert(self.host, self.port, self.base, owned, self.conditional, random.Random(self.seed * 1000 + conn_index))


class _BundleUpsert(_Upsert):
    """``size`` PUT entries per ``POST [base]`` (a transaction or batch Bundle)."""

    def __init__(self, *args: Any, btype: str, size: int) -> None:
        super().__init__(*args)
        self.btype, self.size = btype, size

    def request(self) -> bytes:
        entries = []
        for _ in range(self.size):
            rid, mrn = self.owned[self.i % len(self.owned)]
            self.i += 1
            patient = realistic_patient(self.rng, int(mrn.removeprefix("MRN-")))
            if self.conditional:
                url = f"Patient?identifier={MRN_SYSTEM}|{mrn}"
            else:
                url = f"Patient/{rid}"
                patient = {"resourceType": "Patient", "id": rid, **{k: v for k, v in patient.items() if k != "resourceType"}}
            entries.append({"resource": patient, "request": {"method": "PUT", "url": url}})
        body = orjson.dumps({"resourceType": "Bundle", "type": self.btype, "entry": entries})
        headers = dict(_JSON_HEADERS, Prefer="return=minimal")
        return build_request("POST", self.host, self.port, self.base, body, headers)


class BundleUpserts(Upserts):
    """Like ``Upserts``, ``size`` Patients per transaction or batch Bundle (needs ``size`` <= Patients per connection)."""

    def __init__(self, *args: Any, btype: str, size: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.btype, self.size = btype, size

    def __call__(self, conn_index: int) -> _BundleUpsert:
        owned = self.patients[conn_index :: self.connections]
        return _BundleUpsert(self.host, self.port, self.base, owned, self.conditional,
                             random.Random(self.seed * 1000 + conn_index), btype=self.btype, size=self.size)
