"""The R4 element-type model the FHIRPath translator navigates with.

It is the model ``fhirpathpy`` ships for R4 (``fhirpathpy.models.models["r4"]``, generated from
the official 4.0.1 StructureDefinitions): element path -> type, choice elements -> their types,
backbone elements defined elsewhere (``contentReference``) and each type's parent.

``children(type, name)`` answers "which JSON keys hold element ``name`` of ``type`` and what is
each one's type", e.g. ``children("Observation", "value")`` ->
``[("valueQuantity", "Quantity"), ("valueCodeableConcept", "CodeableConcept"), ...]``.
Types are FHIR type names (``HumanName``, ``dateTime``) or, for backbone elements, their path
(``Observation.component``).
"""

from __future__ import annotations

from functools import cache

from fhirpathpy.models import models

_SYSTEM_TYPES = {
    "System.String": "string",
    "System.Boolean": "boolean",
    "System.Integer": "integer",
    "System.Decimal": "decimal",
    "System.Date": "date",
    "System.DateTime": "dateTime",
    "System.Time": "time",
}
PRIMITIVES = frozenset(
    {
        "boolean",
        "integer",
        "string",
        "decimal",
        "uri",
        "url",
        "canonical",
        "base64Binary",
        "instant",
        "date",
        "dateTime",
        "time",
        "code",
        "oid",
        "id",
        "markdown",
        "unsignedInt",
        "positiveInt",
        "uuid",
        "xhtml",
    }
)


class FhirModel:
    def __init__(self, version: str = "r4") -> None:
        data = models[version]
        self.path2type: dict[str, str] = data["path2Type"]
        self.choices: dict[str, list[str]] = data["choiceTypePaths"]
        self.elsewhere: dict[str, str] = data["pathsDefinedElsewhere"]
        self.parents: dict[str, str] = data["type2Parent"]
        backbones: set[str] = set()
        for path in self.path2type:
            parts = path.split(".")
            for i in range(2, len(parts)):
                prefix = ".".join(parts[:i])
                if prefix not in self.path2type:
                    backbones.add(prefix)
        self.backbones = frozenset(backbones)
        self.resource_types = frozenset(t for t in self.parents if self.is_subtype(t, "Resource") and "." not in t)

    @staticmethod
    def _type_name(raw: str) -> str:
        return _SYSTEM_TYPES.get(raw, raw)

    def canonical(self, type_name: str) -> str:
        return self.elsewhere.get(type_name, type_name)

    def is_subtype(self, type_name: str, ancestor: str) -> bool:
        t: str | None = type_name
        while t is not None:
            if t == ancestor:
                return True
            t = self.parents.get(t)
        return False

    @cache  # noqa: B019 - one model per process, lives as long as it
    def children(self, type_name: str, name: str) -> tuple[tuple[str, str], ...] | None:
        """JSON keys and types of element ``name`` on ``type_name``; ``None`` if there is no such element."""
        t: str | None = self.canonical(type_name)
        while t is not None:
            path = f"{t}.{name}"
            if path in self.path2type:
                return ((name, self._type_name(self.path2type[path])),)
            if path in self.choices:
                out = []
                for suffix in self.choices[path]:
                    key = name + suffix
                    out.append((key, self._type_name(self.path2type.get(f"{t}.{key}", suffix))))
                return tuple(out)
            if path in self.backbones or path in self.elsewhere:
                return ((name, self.canonical(path)),)
            t = self.parents.get(t)
        return None


@cache
def get_model() -> FhirModel:
    return FhirModel()
