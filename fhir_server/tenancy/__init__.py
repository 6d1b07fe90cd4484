"""Tenants: the hospital a request is for (``/fhir/{tenant}/…``), their registry and administration.

* ``middleware``: recognises the tenant segment of the URL, strips it, records it in the request.
* ``store``: the ``tenant`` table (create, list, look up).
* ``admin``: ``[base]/$tenants`` (GET list, POST create), for the admin role of the default tenant.
"""
