"""FHIR R4 XML <-> FHIR JSON (https://hl7.org/fhir/R4/xml.html, json.html).

Both directions walk the packaged element table (``tools/build_xml_defs.py``): XML needs the
StructureDefinition's element order, which JSON does not keep, and JSON needs the primitive
types (booleans and numbers) that XML writes as text.

- namespace ``http://hl7.org/fhir``; primitives as ``value`` attributes; ``Element.id`` and
  ``Extension.url`` as attributes; resource ``id`` as an element;
- a primitive's ``_name`` sibling (id/extension) merges into the same XML element; in arrays the
  two JSON lists align by index with ``null`` where one side is absent;
- resources inside ``contained``, ``Bundle.entry.resource``, ``Parameters.parameter.resource``...
  sit in an element named by their type;
- the narrative ``div`` passes through as XHTML (namespace ``http://www.w3.org/1999/xhtml``);
- decimals keep their text: ``xml_to_json`` gives ``Decimal`` by default, ``json_to_xml``
  writes a ``Decimal`` as written (parse JSON with ``parse_float=Decimal`` to keep ``1.50``).

XML input is parsed by lxml with entity resolution, DTD loading and network access off, and a
document with a DOCTYPE is refused, so XXE and entity expansion ("billion laughs") cannot occur.
"""

from __future__ import annotations

import copy
import gzip
import json
import re
import threading
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from lxml import etree

__all__ = ["FHIR_NS", "XHTML_NS", "XmlFormatError", "json_body_to_xml", "json_number", "json_to_xml", "xml_to_json"]

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_F = "{" + FHIR_NS + "}"
_FLEN = len(_F)
_XHTML_DIV = "{" + XHTML_NS + "}div"
_DATA = Path(__file__).resolve().parents[1] / "definitions" / "data" / "xml-structures.json.gz"

PRIM, COMPLEX, RESOURCE, XHTML = 0, 1, 2, 3
_ARRAY, _ATTR = 1, 2


class XmlFormatError(ValueError):
    """The XML (or the JSON being written as XML) does not follow the FHIR XML rules."""

    def __init__(self, message: str, *, line: int | None = None, expression: str | None = None) -> None:
        where = f"{expression}: " if expression else ""
        at = f" (line {line})" if line else ""
        super().__init__(f"{where}{message}{at}")
        self.message = message
        self.line = line
        self.expression = expression


class _Elem:
    __slots__ = ("array", "attr", "form", "key", "kind", "pos", "td", "type")

    def __init__(self, key: str, pos: int, flags: int, type_: str, primitives: dict[str, str]) -> None:
        self.key = key
        self.pos = pos
        self.array = bool(flags & _ARRAY)
        self.attr = bool(flags & _ATTR)
        self.type = type_
        self.form = primitives.get(type_, "")
        self.td: _Type | None = None
        if type_ == "xhtml":
            self.kind = XHTML
        elif type_ in primitives:
            self.kind = PRIM
        elif type_ == "Resource":
            self.kind = RESOURCE
        else:
            self.kind = COMPLEX


class _Type:
    __slots__ = ("attrs", "elems", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.elems: dict[str, _Elem] = {}  # JSON key / XML element name -> element (choices expanded)
        self.attrs: tuple[str, ...] = ()  # keys written as XML attributes (id, url)


@cache
def _model() -> tuple[dict[str, _Type], dict[str, _Type]]:
    """``(all types by name, resource types by name)`` from the packaged table."""
    with gzip.open(_DATA, "rb") as fh:
        raw = json.loads(fh.read())
    primitives: dict[str, str] = raw["primitives"]
    types: dict[str, _Type] = {}
    for name, elements in raw["types"].items():
        td = types[name] = _Type(name)
        pos = 0
        attrs = []
        for ename, flags, kinds in elements:
            choice = ename.endswith("[x]")
            for t in kinds:
                key = ename[:-3] + t[0].upper() + t[1:] if choice else ename
                td.elems[key] = _Elem(key, pos, flags, t, primitives)
                pos += 1
                if flags & _ATTR:
                    attrs.append(key)
                if not choice:
                    break
        td.attrs = tuple(attrs)
    for td in types.values():
        for e in td.elems.values():
            if e.kind == COMPLEX:
                e.td = types[e.type]
    return types, {r: types[r] for r in raw["resources"]}


# ---------------------------------------------------------------------------------------------
# JSON -> XML

_ESCAPE = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;", ord('"'): "&quot;",
           ord("\n"): "&#10;", ord("\r"): "&#13;", ord("\t"): "&#9;"}  # fmt: skip
_ESCAPE.update({c: "\ufffd" for c in (*range(9), 11, 12, *range(14, 32), 0xFFFE, 0xFFFF)})


def _text(value: Any, where: str) -> str:
    """A primitive's JSON value as the text of its ``value`` attribute, escaped."""
    t = type(value)
    if t is str:
        return value.translate(_ESCAPE)  # type: ignore[no-any-return]
    if t is bool:
        return "true" if value else "false"
    if t is int:
        return str(value)
    if t is float:
        return repr(value)
    if t is Decimal:
        exp = value.as_tuple().exponent
        return format(value, "f") if isinstance(exp, int) and exp <= 0 else str(value)
    raise XmlFormatError(f"a primitive value was expected, not {type(value).__name__}", expression=where)


class _Writer:
    __slots__ = ("out", "step")

    def __init__(self, pretty: bool) -> None:
        self.out: list[str] = []
        self.step = "  " if pretty else ""

    def resource(self, obj: Any, ind: str, where: str, root: bool = False) -> None:
        if type(obj) is not dict:
            raise XmlFormatError("a resource (JSON object) was expected", expression=where)
        rt = obj.get("resourceType")
        td = _model()[1].get(rt) if type(rt) is str else None
        if td is None:
            raise XmlFormatError(f"unknown resourceType {rt!r}", expression=where)
        out = self.out
        out.append(f'{ind}<{rt} xmlns="{FHIR_NS}">' if root else f"{ind}<{rt}>")
        self.children(obj, td, ind + self.step if self.step else "", rt, resource=True)
        out.append(f"{ind}</{rt}>")

    def children(self, obj: dict[str, Any], td: _Type, ind: str, where: str, resource: bool = False) -> None:
        elems = td.elems
        present: dict[int, _Elem] = {}
        for key in obj:
            e = elems.get(key)
            if e is None:
                if key[:1] == "_" and (e := elems.get(key[1:])) is not None and e.kind == PRIM:
                    pass
                elif resource and key == "resourceType":
                    continue
                else:
                    raise XmlFormatError(f"unknown element '{key}' in {td.name}", expression=where)
            if not e.attr:
                present[e.pos] = e
        step = self.step
        for pos in sorted(present):
            e = present[pos]
            key = e.key
            path = f"{where}.{key}"
            kind = e.kind
            if kind == PRIM:
                value, ext = obj.get(key), obj.get("_" + key)
                if e.array:
                    values = value if value is not None else []
                    exts = ext if ext is not None else []
                    if type(values) is not list or type(exts) is not list:
                        raise XmlFormatError("a JSON array was expected", expression=path)
                    for i in range(max(len(values), len(exts))):
                        self.primitive(key, values[i] if i < len(values) else None,
                                       exts[i] if i < len(exts) else None, ind, path)  # fmt: skip
                else:
                    self.primitive(key, value, ext, ind, path)
                continue
            value = obj[key]
            items = value if e.array else (value,)
            if e.array and type(value) is not list:
                raise XmlFormatError("a JSON array was expected", expression=path)
            for item in items:
                if kind == COMPLEX:
                    self.complex(key, item, e.td, ind, path)  # type: ignore[arg-type]
                elif kind == RESOURCE:
                    self.out.append(f"{ind}<{key}>")
                    self.resource(item, ind + step if step else "", path)
                    self.out.append(f"{ind}</{key}>")
                else:
                    self.out.append(ind + _xhtml(item, path))

    def complex(self, name: str, obj: Any, td: _Type, ind: str, where: str) -> None:
        if type(obj) is not dict:
            raise XmlFormatError(f"a JSON object was expected for {td.name}", expression=where)
        attrs = "".join(f' {a}="{_text(obj[a], where)}"' for a in td.attrs if a in obj)
        out = self.out
        start = len(out)
        out.append(f"{ind}<{name}{attrs}>")
        self.children(obj, td, ind + self.step if self.step else "", where)
        if len(out) == start + 1:
            out[start] = f"{ind}<{name}{attrs}/>"
        else:
            out.append(f"{ind}</{name}>")

    def primitive(self, name: str, value: Any, ext: Any, ind: str, where: str) -> None:
        head = f"{ind}<{name}"
        extensions = None
        if ext is not None:
            if type(ext) is not dict:
                raise XmlFormatError("a JSON object was expected for a primitive's id/extension", expression=where)
            for k in ext:
                if k not in ("id", "extension"):
                    raise XmlFormatError(f"unknown element '{k}' on a primitive", expression=where)
            if "id" in ext:
                head += f' id="{_text(ext["id"], where)}"'
            extensions = ext.get("extension")
        if value is not None:
            head += f' value="{_text(value, where)}"'
        elif not extensions and ext is None:
            raise XmlFormatError("null is only allowed where the other array has a value", expression=where)
        if not extensions:
            self.out.append(head + "/>")
            return
        if type(extensions) is not list:
            raise XmlFormatError("a JSON array was expected", expression=where + ".extension")
        self.out.append(head + ">")
        ext_td = _model()[0]["Extension"]
        child = ind + self.step if self.step else ""
        for x in extensions:
            self.complex("extension", x, ext_td, child, where + ".extension")
        self.out.append(f"{ind}</{name}>")


def _xhtml(div: Any, where: str) -> str:
    """The narrative as XHTML text, checked to be one well-formed ``div`` so nothing is injected."""
    if type(div) is not str:
        raise XmlFormatError("the narrative div must be a string", expression=where)
    try:
        el = etree.fromstring(div.encode(), _parser())
    except etree.XMLSyntaxError as exc:
        raise XmlFormatError(f"the narrative is not well-formed XHTML: {exc.msg}", expression=where) from None
    if el.tag == _XHTML_DIV and div.lstrip().startswith("<div"):
        return div.strip()
    if el.tag != "div":
        raise XmlFormatError("the narrative must be an XHTML <div>", expression=where)
    # a div without the XHTML namespace: read it again inside an element declaring it
    wrapped = etree.fromstring(f'<w xmlns="{XHTML_NS}">{div.strip()}</w>'.encode(), _parser())
    return str(etree.tostring(next(wrapped.iterchildren(_XHTML_DIV)), encoding=str, with_tail=False))


def json_to_xml(resource: dict[str, Any], *, pretty: bool = False) -> bytes:
    """A FHIR JSON resource (parsed; decimals as float or Decimal) as FHIR XML, UTF-8."""
    w = _Writer(pretty)
    w.out.append('<?xml version="1.0" encoding="UTF-8"?>')
    w.resource(resource, "\n" if pretty else "", "", root=True)
    if pretty:
        w.out.append("\n")
    return "".join(w.out).encode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# XML -> JSON

_local = threading.local()
_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def _parser() -> etree.XMLParser:
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
            remove_comments=False, remove_pis=False, huge_tree=False,
        )  # fmt: skip
    return parser


def _path(el: Any) -> str:
    """FHIRPath-like location of an element, for error messages (computed only on error)."""
    names = []
    for node in (el, *el.iterancestors()):
        tag = node.tag if type(node.tag) is str else ""
        names.append(tag[_FLEN:] if tag.startswith(_F) else etree.QName(tag).localname if tag else "?")
    names.reverse()
    # FHIRPath leaves out the type wrapper of a nested resource: Bundle.entry.resource.name
    return ".".join([names[0], *(n for n in names[1:] if not n[:1].isupper())])


def _fail(el: Any, message: str) -> XmlFormatError:
    return XmlFormatError(message, line=el.sourceline, expression=_path(el))


def json_number(text: str) -> int | float:
    """A decimal's text as orjson would read the same JSON number (int when it has no '.'/exponent)."""
    if "." in text or "e" in text or "E" in text:
        return float(text)
    return int(text)


class _Reader:
    __slots__ = ("decimal",)

    def __init__(self, decimal: Callable[[str], Any]) -> None:
        self.decimal = decimal

    def resource(self, el: Any) -> dict[str, Any]:
        tag = el.tag
        rt = tag[_FLEN:] if type(tag) is str and tag.startswith(_F) else None
        td = _model()[1].get(rt) if rt else None
        if td is None:
            raise _fail(el, f"<{etree.QName(tag).localname if type(tag) is str else tag}> is not a FHIR resource"
                            f" (expected a resource type in namespace {FHIR_NS})")  # fmt: skip
        self.no_text(el)
        for a in el.attrib:
            if a[0] != "{":
                raise _fail(el, f"unexpected attribute '{a}' on a resource")
        out: dict[str, Any] = {"resourceType": rt}
        self.children(el, td, out)
        return out

    @staticmethod
    def no_text(el: Any) -> None:
        text = el.text
        if text and not text.isspace():
            raise _fail(el, "FHIR XML carries values in 'value' attributes, not in element text")

    def children(self, el: Any, td: _Type, out: dict[str, Any]) -> None:
        elems = td.elems
        prim_arrays: list[str] | None = None
        for child in el:
            tag = child.tag
            if type(tag) is not str:
                continue  # comments, processing instructions
            if tag.startswith(_F):
                e = elems.get(tag[_FLEN:])
            elif tag == _XHTML_DIV:
                e = elems.get("div")
                if e is not None and e.kind != XHTML:
                    e = None
            else:
                raise _fail(child, f"element <{tag}> is in no FHIR namespace ({FHIR_NS})")
            if e is None or e.attr or (e.kind == XHTML and tag != _XHTML_DIV):
                raise _fail(child, f"unknown element '{etree.QName(tag).localname}' in {td.name}")
            kind = e.kind
            key = e.key
            if kind == PRIM:
                value, ext = self.primitive(child, e)
                if e.array:
                    if key not in out:
                        out[key] = []
                        out["_" + key] = []
                        prim_arrays = [*prim_arrays, key] if prim_arrays else [key]
                    out[key].append(value)
                    out["_" + key].append(ext)
                    continue
                if key in out or "_" + key in out:
                    raise _fail(child, f"'{key}' appears more than once but does not repeat")
                if value is not None:
                    out[key] = value
                if ext is not None:
                    out["_" + key] = ext
                continue
            if kind == COMPLEX:
                self.no_text(child)
                value = {}
                ctd: _Type = e.td  # type: ignore[assignment]
                attrib = child.attrib
                if attrib:
                    for a, v in attrib.items():
                        if a in ctd.attrs:
                            value[a] = v
                        elif a[0] != "{":
                            raise _fail(child, f"unexpected attribute '{a}'")
                self.children(child, ctd, value)
                if not value:
                    raise _fail(child, f"'{key}' is empty: an element needs a value, children or extensions")
            elif kind == RESOURCE:
                self.no_text(child)
                kids = [c for c in child if type(c.tag) is str]
                if len(kids) != 1:
                    raise _fail(child, f"'{key}' must hold exactly one resource element")
                value = self.resource(kids[0])
            else:
                value = _div_text(child)
            if e.array:
                if key in out:
                    out[key].append(value)
                else:
                    out[key] = [value]
            elif key in out:
                raise _fail(child, f"'{key}' appears more than once but does not repeat")
            else:
                out[key] = value
        if prim_arrays:
            for key in prim_arrays:
                if all(x is None for x in out["_" + key]):
                    del out["_" + key]
                elif all(v is None for v in out[key]):
                    del out[key]

    def primitive(self, el: Any, e: _Elem) -> tuple[Any, dict[str, Any] | None]:
        attrib = el.attrib
        text = attrib.get("value")
        eid = attrib.get("id")
        if len(attrib) > (text is not None) + (eid is not None):
            for a in attrib:
                if a not in ("value", "id") and a[0] != "{":
                    raise _fail(el, f"unexpected attribute '{a}'")
        self.no_text(el)
        ext: dict[str, Any] | None = None
        if eid is not None or len(el):
            ext = {}
            if eid is not None:
                ext["id"] = eid
            extensions = []
            ext_td = _model()[0]["Extension"]
            for c in el:
                if type(c.tag) is not str:
                    continue
                if c.tag != _F + "extension":
                    raise _fail(c, f"a primitive holds only extensions, not '{etree.QName(c.tag).localname}'")
                self.no_text(c)
                x: dict[str, Any] = {}
                for a, v in c.attrib.items():
                    if a in ("id", "url"):
                        x[a] = v
                    elif a[0] != "{":
                        raise _fail(c, f"unexpected attribute '{a}'")
                self.children(c, ext_td, x)
                extensions.append(x)
            if extensions:
                ext["extension"] = extensions
            if not ext:
                ext = None
        if text is None:
            if ext is None:
                raise _fail(el, f"'{e.key}' has neither a value attribute nor extensions")
            return None, ext
        form = e.form
        if form == "s":
            return text, ext
        if form == "b":
            if text == "true":
                return True, ext
            if text == "false":
                return False, ext
            raise _fail(el, f"'{text}' is not a boolean (true or false)")
        if form == "i":
            if _INT.fullmatch(text):
                return int(text), ext
            raise _fail(el, f"'{text}' is not an integer")
        if _DECIMAL.fullmatch(text):
            return self.decimal(text), ext
        raise _fail(el, f"'{text}' is not a decimal")


def _div_text(el: Any) -> str:
    """The XHTML div as text, declaring only the XHTML namespace (not the FHIR document's others)."""
    if el.nsmap != {None: XHTML_NS}:
        el = copy.deepcopy(el)
        etree.cleanup_namespaces(el)
    return str(etree.tostring(el, encoding=str, with_tail=False))


def xml_to_json(data: bytes, *, decimal: Callable[[str], Any] = Decimal) -> dict[str, Any]:
    """A FHIR XML resource as FHIR JSON (a dict). Decimals become ``decimal(text)``: ``Decimal``
    keeps their precision; pass :func:`json_number` to get what ``orjson.loads`` would give.
    Raises :class:`XmlFormatError` naming the element and line of the first fault."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:4]:
        raise XmlFormatError("FHIR XML must be encoded in UTF-8 (http.html#mime-type)")
    if b"<!DOCTYPE" in data:  # refused before parsing (checked again on the parsed document)
        raise XmlFormatError("a DOCTYPE (DTD) is not allowed in FHIR XML")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise XmlFormatError(f"not well-formed XML: {exc.msg}", line=exc.lineno) from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise XmlFormatError("a DOCTYPE (DTD) is not allowed in FHIR XML")
    return _Reader(decimal).resource(root)


def json_body_to_xml(body: bytes | str | dict[str, Any], *, pretty: bool = False) -> bytes:
    """A response body (FHIR JSON text, or already parsed) as FHIR XML; JSON text is read with
    ``parse_float=Decimal`` so decimals keep the digits they were stored with."""
    resource = json.loads(body, parse_float=Decimal) if isinstance(body, (bytes, str)) else body
    return json_to_xml(resource, pretty=pretty)
