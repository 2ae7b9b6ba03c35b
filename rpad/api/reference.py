"""The API reference page: the OpenAPI document and the WebSocket schema rendered as one plain
HTML page (no script, no stylesheet from elsewhere), served at ``GET /api/v1/docs``.

Pure: two documents in, one string out; every text from the documents is HTML-escaped.
"""

from __future__ import annotations

import html
import json
from typing import Any

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;
color:#1b1f24;background:#fff}
h1,h2,h3{line-height:1.25}h2{border-bottom:1px solid #d0d7de;padding-bottom:.3rem;margin-top:2.5rem}
code,pre{font:13px ui-monospace,monospace;background:#f3f4f6;border-radius:4px;padding:.1rem .3rem}
pre{padding:.6rem;overflow:auto}table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}.op{border:1px solid #d0d7de;border-radius:6px;padding:0 1rem 1rem;margin:1rem 0}
.m{font-weight:700;padding:.1rem .4rem;border-radius:4px;color:#fff;background:#57606a}
.GET{background:#0969da}.POST{background:#1a7f37}.DELETE{background:#cf222e}.PUT{background:#9a6700}
.roles{color:#57606a}nav ul{columns:2}
@media (prefers-color-scheme:dark){body{background:#0d1117;color:#e6edf3}
th{background:#161b22}code,pre{background:#161b22}th,td,.op,h2{border-color:#30363d}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _anchor(kind: str, name: str) -> str:
    return kind + "-" + "".join(c if c.isalnum() else "-" for c in name)


def describe(schema: Any) -> str:
    """A short HTML description of a schema's type and limits."""
    if not isinstance(schema, dict) or not schema:
        return "any JSON value"
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#{_anchor("schema", name)}">{_e(name)}</a>'
    for key, word in (("oneOf", "one of"), ("anyOf", "any of")):
        if key in schema and "type" not in schema and "properties" not in schema:
            return f"{word}: " + " | ".join(describe(s) for s in schema[key])
    if "allOf" in schema and "properties" not in schema:
        return " and ".join(describe(s) for s in schema["allOf"])
    if "const" in schema:
        return f"<code>{_e(json.dumps(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{_e(json.dumps(v))}</code>" for v in schema["enum"])
    kinds = schema.get("type", "object" if "properties" in schema else "")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    parts = [k for k in kinds if k != "null"]
    text = " or ".join(parts) or "any JSON value"
    if "array" in parts and "items" in schema:
        text = f"array of {describe(schema['items'])}"
    limits = []
    for key, word in (("minLength", "at least {} characters"), ("maxLength", "at most {} characters"),
                      ("minimum", "&ge; {}"), ("exclusiveMinimum", "&gt; {}"), ("maximum", "&le; {}"),
                      ("maxItems", "at most {} items"), ("format", "{}")):
        if key in schema:
            limits.append(word.format(_e(schema[key])))
    if "pattern" in schema and schema["pattern"] != "^[^\\u0000]*$":
        limits.append(f"matching <code>{_e(schema['pattern'])}</code>")
    if limits:
        text += " (" + ", ".join(limits) + ")"
    if "null" in kinds:
        text += " or null"
    return text


def fields(schema: Any) -> str:
    """A table of an object schema's fields (empty for anything else)."""
    if not isinstance(schema, dict) or "properties" not in schema:
        return ""
    required = set(schema.get("required", []))
    rows = []
    for name, sub in schema["properties"].items():
        note = sub.get("description", "") if isinstance(sub, dict) else ""
        if isinstance(sub, dict) and sub.get("deprecated"):
            note = (note + " (deprecated)").strip()
        rows.append(f"<tr><td><code>{_e(name)}</code>{' *' if name in required else ''}</td>"
                    f"<td>{describe(sub)}</td><td>{_e(note)}</td></tr>")
    extra = schema.get("additionalProperties")
    tail = ("<p>Other fields are refused.</p>" if extra is False and "description" not in schema
            else "")
    return ("<table><tr><th>field (* required)</th><th>type</th><th>notes</th></tr>"
            + "".join(rows) + "</table>" + tail)


def _operation(method: str, path: str, op: dict[str, Any]) -> str:
    out = [f'<div class="op" id="{_anchor("op", op["operationId"])}">',
           (f'<h3><span class="m {method.upper()}">{method.upper()}</span> '
           f"<code>{_e(path)}</code> — {_e(op['summary'])}</h3>")]
    roles = op.get("x-rpad-roles")
    who = "Roles: " + _e(", ".join(roles)) if roles else "No token needed."
    out.append(f'<p class="roles">{who}</p>')
    description = op.get("description", "")
    if description.startswith("**Roles:**"):  # shown above already
        description = description.partition("\n\n")[2]
    if description:
        out.append(f"<p>{_e(description)}</p>")
    params = op.get("parameters", [])
    if params:
        out.append("<table><tr><th>parameter</th><th>in</th><th>type</th><th>notes</th></tr>")
        for p in params:
            out.append(f"<tr><td><code>{_e(p['name'])}</code>{' *' if p.get('required') else ''}"
                       f"</td><td>{_e(p['in'])}</td><td>{describe(p['schema'])}</td>"
                       f"<td>{_e(p.get('description', ''))}</td></tr>")
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        schema = next(iter(body["content"].values()))["schema"]
        out.append(f"<p>Body ({'required' if body.get('required') else 'optional'}): "
                   f"{describe(schema)}</p>")
    out.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>")
    for status, resp in op["responses"].items():
        content = resp.get("content", {})
        shown = ", ".join(f"{describe(c['schema'])} <small>({_e(t)})</small>"
                          for t, c in content.items())
        out.append(f"<tr><td>{_e(status)}</td><td>{_e(resp['description'])}</td>"
                   f"<td>{shown}</td></tr>")
    out.append("</table></div>")
    return "\n".join(out)


def render_reference(openapi: dict[str, Any], ws: dict[str, Any]) -> str:
    info = openapi["info"]
    by_tag: dict[str, list[str]] = {t["name"]: [] for t in openapi.get("tags", [])}
    toc: dict[str, list[str]] = {t: [] for t in by_tag}
    for path, methods in openapi["paths"].items():
        for method, op in methods.items():
            tag = op["tags"][0]
            by_tag.setdefault(tag, []).append(_operation(method, path, op))
            toc.setdefault(tag, []).append(
                f'<li><a href="#{_anchor("op", op["operationId"])}">{_e(method.upper())} '
                f"{_e(path)}</a></li>")
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_e(info['title'])} {_e(info['version'])}: API reference</title>",
           f"<style>{_CSS}</style></head><body>",
           f"<h1>{_e(info['title'])} {_e(info['version'])}: API reference</h1>",
           f"<p>{_e(info.get('summary', ''))}</p><p>{_e(info.get('description', ''))}</p>",
           ('<p>Machine-readable: <a href="openapi.json">openapi.json</a> (OpenAPI 3.1), '
           '<a href="websocket/schema.json">websocket/schema.json</a> (JSON Schema).</p>'),
           "<nav>"]
    for tag, items in toc.items():
        if items:
            out.append(f"<h3>{_e(tag)}</h3><ul>{''.join(items)}</ul>")
    out.append('<h3>more</h3><ul><li><a href="#websocket-protocol">The WebSocket protocol</a>'
               '</li><li><a href="#schemas">Schemas</a></li></ul></nav>')
    descriptions = {t["name"]: t.get("description", "") for t in openapi.get("tags", [])}
    for tag, ops in by_tag.items():
        if ops:
            out.append(f"<h2>{_e(tag)}</h2><p>{_e(descriptions.get(tag, ''))}</p>")
            out.extend(ops)
    defs = ws["$defs"]
    out.append('<h2 id="websocket-protocol">The WebSocket protocol</h2>')
    out.append(f"<p>{_e(ws.get('description', ''))}</p><h3>Client messages</h3>")
    for ref in defs["ClientMessage"]["oneOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        schema = defs[name]
        out.append(f'<h4 id="{_anchor("ws", name)}"><code>{_e(name)}</code></h4>'
                   f"<p>{_e(schema.get('description', ''))}</p>{fields(schema)}")
    out.append("<h3>Server messages</h3><table><tr><th>type</th><th>topic</th><th>seq</th>"
               "<th>data</th><th>meaning</th></tr>")
    for ref in defs["ServerMessage"]["oneOf"]:
        name = ref["$ref"].rsplit("/", 1)[-1]
        props = defs[name]["properties"]
        out.append(f"<tr><td>{describe(props['type'])}</td><td>{describe(props['topic'])}</td>"
                   f"<td>{describe(props['seq'])}</td><td>{describe(props['data'])}"
                   f"{fields(props['data'])}</td>"
                   f"<td>{_e(defs[name].get('description', ''))}</td></tr>")
    out.append("</table>")
    out.append('<h2 id="schemas">Schemas</h2>')
    for name, schema in openapi["components"]["schemas"].items():
        out.append(f'<h3 id="{_anchor("schema", name)}">{_e(name)}</h3>')
        if schema.get("description"):
            out.append(f"<p>{_e(schema['description'])}</p>")
        out.append(fields(schema) or f"<p>{describe(schema)}</p>")
    out.append("</body></html>")
    return "\n".join(out)
