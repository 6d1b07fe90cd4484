#!/usr/bin/env python
"""Medication master search (issue 8): name-prefix search and misspelling-tolerant search p50/p95 on a
master of ``--items`` Medications across the three systems, over HTTP and as the same SQL run directly
in the same run (what the server adds on top of PostgreSQL).

    /work/venv/bin/python bench/bench_medication.py [--items 50000] [--queries 300] [--workers 1]
        [--database-url postgresql://…/medbench]   # keep one loaded database between runs

Set-up: a fresh database (DATABASE_URL as admin, or an embedded PostgreSQL in a temp dir), or with
``--database-url`` an existing database that is neither dropped nor reloaded when it already holds
``--items`` Medications (migrations still applied by the server start; iterate on a change in minutes);

``fhir-server serve --dev`` (access log off), the master loaded through batch Bundles of 500
(validated and indexed like any write; a third each Ayurvedic, Homeopathic, Allopathic, each
claiming its profile, names made of Sanskrit/Latin-like syllables + a form/potency/strength), then
``ANALYZE``. Scenarios, each ``--queries`` sequential requests on one connection:

* ``prefix``: ``GET Medication?name=<first 4 letters of a random name>&_count=20&_total=none``;
* ``fuzzy``: ``GET Medication/$fuzzy-search?name=<that name's first word, one letter dropped or
  doubled, or ph/f, sh/s swapped>&_count=20``, with the hit rate (the intended item among the 20);
* ``sql prefix`` / ``sql fuzzy``: the same WHERE/ORDER as the server's, straight over psycopg.

Goal (issue 8): p95 ≤ 30 ms at 50 000 items. Writes bench/results/medication-<ts>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

NS = "https://fhir-server.example.org/fhir/"
SD = NS + "StructureDefinition/"
SYLLABLES = ["a", "ra", "ka", "ma", "shwa", "tri", "pha", "la", "gan", "dha", "bra", "hmi", "gu", "du", "chi",
             "ja", "ta", "mu", "sta", "ri", "ni", "va", "ya", "sa", "pu", "na", "ve", "li", "to", "zin", "xo",
             "bel", "don", "ar", "ni", "cal", "fer", "sul", "phu", "ros", "mox", "cil", "pra", "zol", "met"]
AYUR_FORMS = ["churna", "vati", "gutika", "kashaya", "arishta", "asava", "ghrita", "taila", "bhasma", "avaleha"]
RASA = ["madhura", "amla", "lavana", "katu", "tikta", "kashaya"]
POTENCIES = ["6C", "30C", "200C", "1M", "10M", "6X", "12X", "LM1", "LM6", "Q3"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize()


def _ext(name: str, key: str, value: Any) -> dict[str, Any]:
    return {"url": SD + name, key: value}


def medication(i: int, rng: random.Random) -> tuple[dict[str, Any], str]:
    word = _word(rng)
    kind = i % 3
    if kind == 0:
        form = rng.choice(AYUR_FORMS)
        name = f"{word} {form.capitalize()}"
        res = {"resourceType": "Medication", "meta": {"profile": [SD + "medication-ayurvedic"]}, "code": {"text": name},
               "form": {"coding": [{"system": NS + "CodeSystem/ayurveda-dosage-form", "code": form}]},
               "extension": [_ext("medication-system-of-medicine", "valueCode", "ayurvedic"),
                             _ext("medication-generic-name", "valueString", word),
                             *[_ext("medication-rasa", "valueCode", r) for r in rng.sample(RASA, 2)],
                             _ext("medication-virya", "valueCode", rng.choice(["ushna", "sheeta"]))]}
    elif kind == 1:
        potency = rng.choice(POTENCIES)
        name = f"{word} {potency}"
        res = {"resourceType": "Medication", "meta": {"profile": [SD + "medication-homeopathic"]}, "code": {"text": name},
               "extension": [_ext("medication-system-of-medicine", "valueCode", "homeopathic"),
                             _ext("medication-potency", "valueString", potency),
                             _ext("medication-source-kingdom", "valueCode", rng.choice(["plant", "mineral", "animal"]))]}
    else:
        mg = rng.choice([5, 10, 25, 50, 100, 250, 500])
        name = f"{word} {mg} mg tablet"
        ucum = "http://unitsofmeasure.org"
        res = {"resourceType": "Medication", "meta": {"profile": [SD + "medication-allopathic"]}, "code": {"text": name},
               "extension": [_ext("medication-system-of-medicine", "valueCode", "allopathic"),
                             _ext("medication-generic-name", "valueString", word)],
               "ingredient": [{"itemCodeableConcept": {"text": word},
                               "strength": {"numerator": {"value": mg, "system": ucum, "code": "mg"},
                                            "denominator": {"value": 1, "system": ucum, "code": "{tbl}"}}}]}
    res["id"] = f"m{i}"
    return res, word


def misspell(word: str, rng: random.Random) -> str:
    w = word.lower()
    for a, b in (("ph", "f"), ("sh", "s"), ("dh", "d")):
        if a in w and rng.random() < 0.5:
            return w.replace(a, b, 1)
    i = rng.randrange(1, len(w))
    return w[:i] + w[i + 1:] if rng.random() < 0.5 else w[:i] + w[i] + w[i:]


def load(base: str, items: int, rng: random.Random) -> list[tuple[str, str]]:
    names: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    with httpx.Client(base_url=base, timeout=600) as c:
        batch: list[dict[str, Any]] = []
        for i in range(items):
            res, word = medication(i, rng)
            names.append((res["id"], word))
            batch.append({"resource": res, "request": {"method": "PUT", "url": f"Medication/{res['id']}"}})
            if len(batch) == 500 or i == items - 1:
                r = c.post("", json={"resourceType": "Bundle", "type": "batch", "entry": batch})
                r.raise_for_status()
                bad = [e["response"]["status"] for e in r.json()["entry"] if not e["response"]["status"].startswith("20")]
                if bad:
                    raise SystemExit(f"load failed: {bad[:3]}")
                batch = []
    print(f"load         : {items} medications in {time.perf_counter() - t0:.1f} s")
    return names


def _stats(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=100)
    return {"p50": round(statistics.median(ms), 2), "p95": round(q[94], 2), "max": round(max(ms), 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=50000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--database-url", help="an existing database: kept, loaded only when it has fewer than --items")
    ap.add_argument("--explain", nargs="?", const="plan", help="print the plan of one fuzzy query (noseq: seq scans off)")
    args = ap.parse_args()
    h.install_signal_handlers()
    rng = random.Random(8)
    out: dict[str, Any] = {"items": args.items, "queries": args.queries}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(h.temp_dir("fhir-bench-medication-"))
        if args.database_url:
            url = args.database_url
        else:
            admin, _ = stack.enter_context(h.postgres(tmp))
            url = stack.enter_context(h.fresh_database(admin, "medication"))
        srv = stack.enter_context(h.fhir_server(url, args.workers, tmp / "server.log", FHIR_ACCESS_LOG="false"))
        srv.start("/fhir/metadata")
        base = f"http://{h.HOST}:{srv.port}/fhir"
        have = h.query(url, "SELECT count(*) FROM resource WHERE resource_type = 'Medication' AND NOT deleted")[0][0]
        if args.database_url and int(have) >= args.items:  # type: ignore[call-overload]
            names = [(res["id"], word) for res, word in (medication(i, rng) for i in range(args.items))]  # same draws
            print(f"load         : skipped, {have} medications already in the database")
        else:
            names = load(base, args.items, rng)
        h.execute(url, "ANALYZE")
        picks = [rng.choice(names) for _ in range(args.queries)]
        prefixes = [w[:4].lower() for _, w in picks]
        typos = [misspell(w, rng) for _, w in picks]
        results: dict[str, dict[str, float]] = {}
        with httpx.Client(base_url=base, timeout=60) as c:
            for _ in range(20):  # warm-up
                c.get("/Medication", params={"name": "abc", "_count": "20", "_total": "none"})
                c.get("/Medication/$fuzzy-search", params={"name": "abcd", "_count": "20"})
            ms = []
            for p in prefixes:
                t = time.perf_counter()
                c.get("/Medication", params={"name": p, "_count": "20", "_total": "none"}).raise_for_status()
                ms.append((time.perf_counter() - t) * 1000)
            results["http prefix"] = _stats(ms)
            ms, hits = [], 0
            for (mid, _), typo in zip(picks, typos, strict=True):
                t = time.perf_counter()
                r = c.get("/Medication/$fuzzy-search", params={"name": typo, "_count": "20"})
                ms.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                hits += any(e["resource"]["id"] == mid for e in r.json()["entry"])
            results["http fuzzy"] = _stats(ms)
            out["fuzzy_hit_rate"] = round(hits / len(picks), 3)
        from fhir_server.profiles.fuzzy import THRESHOLD, fuzzy_sql
        from fhir_server.search.query_values import like_escape

        prefix_sql = ("SELECT r.content::text FROM resource r WHERE r.tenant_id = %(tenant)s AND r.resource_type = 'Medication'"
                      " AND NOT r.deleted AND EXISTS (SELECT 1 FROM idx_string t WHERE t.tenant_id = %(tenant)s"
                      " AND t.resource_type = r.resource_type AND t.resource_id = r.id AND t.param = 'name'"
                      " AND t.value_norm LIKE %(p)s) ORDER BY r.last_updated DESC, r.id DESC LIMIT 21")
        with psycopg.connect(url, autocommit=True) as conn:
            ms = []
            for p in prefixes:
                t = time.perf_counter()
                conn.execute(prefix_sql, {"tenant": "default", "p": like_escape(p) + "%"}).fetchall()
                ms.append((time.perf_counter() - t) * 1000)
            results["sql prefix"] = _stats(ms)
            ms = []
            sql = fuzzy_sql("TRUE", None)
            for typo in typos:
                t = time.perf_counter()
                with conn.transaction():
                    conn.execute(f"SET LOCAL pg_trgm.word_similarity_threshold = {THRESHOLD}")
                    conn.execute(sql, {"tenant": "default", "q": typo, "prefix": like_escape(typo) + "%",
                                       "trigrams": len(typo) >= 3, "count": 20}).fetchall()
                ms.append((time.perf_counter() - t) * 1000)
            results["sql fuzzy"] = _stats(ms)
            if args.explain:
                with conn.transaction():
                    conn.execute(f"SET LOCAL pg_trgm.word_similarity_threshold = {THRESHOLD}")
                    if args.explain == "noseq":
                        conn.execute("SET LOCAL enable_seqscan = off")
                    plan = conn.execute("EXPLAIN ANALYZE " + sql, {"tenant": "default", "q": typos[0], "prefix": "x%",
                                                                   "trigrams": True, "count": 20}).fetchall()
                print("\n".join(r[0] for r in plan))
        out["results"] = results
        for k, v in results.items():
            print(f"{k:13}: p50 {v['p50']:7.2f} ms   p95 {v['p95']:7.2f} ms   max {v['max']:7.2f} ms")
        print(f"fuzzy hits   : {out['fuzzy_hit_rate']:.1%} of misspelt names find the intended item in the top 20")
        print(f"written      : {h.write_result('medication', out)}")
    return 0


if __name__ == "__main__":
    h.run_main(main)
