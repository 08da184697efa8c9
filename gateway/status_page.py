"""The status page, served beside `/metrics` by gateway.metrics.MetricsServer (read-only):

- `/`: the gateway's health, each link with its state and since when, the queues, and the
  latest jobs with per-member progress (a small inline script polls `/status.json` every
  second; without it the page is still right when loaded);
- `/status.json`: the same as JSON;
- `/jobs/<id>[?lang=fr|nl|de|en]`: the job's report (gateway/report_html.py).

A job id from the path is checked with the job id rule before any lookup. Everything shown is
HTML-escaped; members appear by ref and masked address only.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Mapping
from html import escape
from typing import Any
from urllib.parse import parse_qs, unquote

from .async_store import AsyncStore
from .errors import StoreError
from .job_id import JOB_ID_PATTERN
from .outcomes import count_state_sets
from .reasons import LANGS
from .report import read_report
from .report_html import CSS, local_time, render_html
from .status import iso
from .store_contract import StoreContract

log = logging.getLogger("gateway.status_page")

Response = tuple[str, str, bytes]  # HTTP status, content type, body
HTML = "text/html; charset=utf-8"
_JOB_ID = re.compile(JOB_ID_PATTERN)
JOBS_SHOWN = 10


class StatusPage:
    """Answers the page's paths; `health` returns (state, links, queues) of the running
    gateway, read on the event loop."""

    def __init__(
        self,
        store: AsyncStore,
        health: Callable[[], tuple[str, Mapping[str, Any], Mapping[str, Any]]],
        node: str = "",
    ) -> None:
        self._store = store
        self._health = health
        self.node = node
        self._since: dict[str, tuple[str, float]] = {}  # link -> (state, first seen in it)
        self._started = time.time()

    async def handle(self, target: str) -> Response | None:
        """The response for a request target (path and query), or None: not ours."""
        try:
            return await self._handle(target)
        except (StoreError, sqlite3.Error) as exc:
            log.warning("status page: the store could not answer: %r", exc)
            return "503 Service Unavailable", "text/plain", b"store unavailable\n"

    async def _handle(self, target: str) -> Response | None:
        path, _, query = target.partition("?")
        if path == "/":
            return "200 OK", HTML, render_page(await self.snapshot()).encode()
        if path == "/status.json":
            body = json.dumps(await self.snapshot(), ensure_ascii=False).encode()
            return "200 OK", "application/json", body
        if path.startswith("/jobs/"):
            job_id = unquote(path[len("/jobs/") :])
            if not _JOB_ID.fullmatch(job_id):
                return "400 Bad Request", "text/plain", b"not a job id\n"
            lang = parse_qs(query).get("lang", ["en"])[0]
            lang = lang if lang in LANGS else "en"
            report = await self._store.run(read_report, self._store.store, job_id)
            if report is None:
                return "404 Not Found", "text/plain", b"no such job\n"
            return "200 OK", HTML, render_html(report, lang).encode()
        return None

    async def snapshot(self) -> dict[str, Any]:
        state, links, queues = self._health()
        now = time.time()
        shown_links = {}
        for name, health in links.items():
            h = health if isinstance(health, Mapping) else {}
            link_state = str(h.get("state", "?"))
            seen = self._since.get(name)
            if seen is None or seen[0] != link_state:
                # Known from when this server first saw the state (or the link's own `since`).
                first = self._started if seen is None else now
                seen = (link_state, float(h.get("since") or first))
                self._since[name] = seen
            shown_links[name] = {
                "state": link_state,
                "since": iso(seen[1]),
                "last_error": h.get("last_error"),
            }
        jobs = await self._store.run(_recent_jobs, self._store.store, JOBS_SHOWN)
        return {
            "node": self.node,
            "state": state,
            "time": iso(now),
            "links": shown_links,
            "queues": {k: dict(v) for k, v in queues.items()},
            "jobs": jobs,
        }


def _recent_jobs(store: StoreContract, limit: int) -> list[dict[str, Any]]:
    out = []
    for row in store.recent_jobs(limit):
        out.append(
            {
                "id": row.id,
                "state": row.state.value,
                "priority": row.priority.label,
                "created_at": iso(row.created_at),
                "created": local_time(row.created_at),
                "members": count_state_sets(store.member_state_sets(row.id)).as_dict(),
            }
        )
    return out


# -- the page -----------------------------------------------------------------------------
PAGE_CSS = """
.state{display:inline-block;padding:.1rem .5rem;border-radius:.3rem;background:#eee}
.state.ready,.state.up,.state.done{background:#d8f0d8}
.state.degraded,.state.starting,.state.running,.state.accepted{background:#fff0c8}
.state.down,.state.auth_failed,.state.conflict,.state.stopping{background:#f8d0d0}
h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
progress{width:10rem}
"""

# Keeps the page live without a reload: fills the same cells the server rendered.
SCRIPT = """
async function refresh(){
  try{
    const r=await fetch('status.json',{cache:'no-store'});
    if(!r.ok)return;
    const s=await r.json();
    const g=document.getElementById('gateway-state');
    g.textContent=s.state;g.className='state '+s.state;
    for(const [name,l] of Object.entries(s.links)){
      const row=document.getElementById('link-'+name);
      if(!row)continue;
      row.querySelector('.state').textContent=l.state;
      row.querySelector('.state').className='state '+l.state;
      row.querySelector('.since').textContent=l.since||'';
    }
    const body=document.getElementById('jobs-body');
    body.replaceChildren(...s.jobs.map(jobRow));
    document.getElementById('updated').textContent=s.time;
    document.body.dataset.live='1';
  }catch(e){document.body.dataset.live='0'}
}
function cell(text,cls){const td=document.createElement('td');td.textContent=text;
  if(cls)td.className=cls;return td}
function jobRow(j){
  const tr=document.createElement('tr');const m=j.members;
  const a=document.createElement('a');a.href='jobs/'+encodeURIComponent(j.id);a.textContent=j.id;
  const id=document.createElement('td');id.appendChild(a);tr.appendChild(id);
  const st=cell('');const sp=document.createElement('span');sp.className='state '+j.state;
  sp.textContent=j.state;st.appendChild(sp);tr.appendChild(st);
  tr.appendChild(cell(j.priority));tr.appendChild(cell(j.created));
  const p=cell('','progress');const bar=document.createElement('progress');
  bar.max=m.total||1;bar.value=m.reached;p.appendChild(bar);
  p.appendChild(document.createTextNode(' '+m.reached+' / '+m.total));tr.appendChild(p);
  tr.appendChild(cell(String(m.acknowledged),'acknowledged'));
  tr.appendChild(cell(String(m.not_reached),'not-reached'));
  tr.appendChild(cell(String(m.pending),'pending'));
  tr.dataset.job=j.id;return tr;
}
refresh();setInterval(refresh,1000);
"""


def _state(value: str) -> str:
    return f'<span class="state {escape(value)}">{escape(value)}</span>'


def _job_row(j: Mapping[str, Any]) -> str:
    m = j["members"]
    job_id = escape(j["id"])
    return (
        f'<tr data-job="{job_id}"><td><a href="jobs/{job_id}">{job_id}</a></td>'
        f"<td>{_state(j['state'])}</td><td>{escape(j['priority'])}</td>"
        f"<td>{escape(j['created'])}</td>"
        f'<td class="progress"><progress max="{m["total"] or 1}" value="{m["reached"]}">'
        f"</progress> {m['reached']} / {m['total']}</td>"
        f'<td class="acknowledged">{m["acknowledged"]}</td>'
        f'<td class="not-reached">{m["not_reached"]}</td><td class="pending">{m["pending"]}</td>'
        "</tr>"
    )


def render_page(s: Mapping[str, Any]) -> str:
    links = "".join(
        f'<tr id="link-{escape(name)}"><td>{escape(name)}</td><td>{_state(link["state"])}</td>'
        f'<td class="since">{escape(link["since"] or "")}</td>'
        f"<td>{escape(str(link['last_error'] or ''))}</td></tr>"
        for name, link in s["links"].items()
    )
    queue_keys = sorted({k for q in s["queues"].values() for k in q})
    queues = "".join(
        f"<tr><td>{escape(name)}</td>"
        + "".join(f"<td>{escape(str(q.get(k, '')))}</td>" for k in queue_keys)
        + "</tr>"
        for name, q in s["queues"].items()
    )
    queue_head = "".join(f"<th>{escape(k)}</th>" for k in queue_keys)
    jobs = "".join(_job_row(j) for j in s["jobs"])
    title = f"plp-gateway {s['node']}".strip()
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<title>{escape(title)}</title><style>{CSS}{PAGE_CSS}</style></head><body data-live="">\n'
        f"<h1>{escape(title)} {_state(s['state']).replace('<span', '<span id=gateway-state', 1)}"
        "</h1>\n"
        f'<p class="note">updated <span id="updated">{escape(s["time"])}</span> (UTC)</p>\n'
        "<h2>Links</h2>\n<table><thead><tr><th>link</th><th>state</th><th>since (UTC)</th>"
        f"<th>last error</th></tr></thead><tbody>{links}</tbody></table>\n"
        f"<h2>Queues</h2>\n<table><thead><tr><th>channel</th>{queue_head}</tr></thead>"
        f"<tbody>{queues}</tbody></table>\n"
        "<h2>Latest jobs</h2>\n<table><thead><tr><th>job</th><th>state</th><th>priority</th>"
        "<th>created</th><th>members reached</th><th>confirmed</th><th>not reached</th>"
        f'<th>in progress</th></tr></thead><tbody id="jobs-body">{jobs}</tbody></table>\n'
        f"<script>{SCRIPT}</script>\n</body></html>\n"
    )
