// The hearth dashboard: plain DOM code, no framework and no build step, so the node can embed
// the file as it is. Everything shown comes from /api/events (one snapshot of /api/cluster,
// /api/instances and /api/alerts per change), read with fetch rather than EventSource because
// EventSource cannot send the Authorization header a node that requires tokens needs.
'use strict';
(() => {
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';
  const TOKEN_KEY = 'hearth.token';
  // Telemetry samples kept per device for the temperature trend (about a minute at the
  // default telemetry period).
  const TREND = 60;
  // The alert rules fit the headroom trend over this many samples; the estimate here follows.
  const FIT = 30;
  // Link colours: red where the link_degraded alert starts, amber at a third of it.
  const LINK_BAD_MS = 150, LINK_BAD_LOSS = 0.02, LINK_WARN_MS = 50, LINK_WARN_LOSS = 0.005;

  let token = localStorage.getItem(TOKEN_KEY) || '';
  let snap = null;
  const names = new Map(); // node id -> name, kept after a node leaves so alerts still read well
  const trends = new Map(); // "node/device" -> [{t, c, h}]
  const measured = new Map(); // model -> {tps, ttft, tokens} of the playground's last answer
  const chatHistory = [];

  // ---- DOM helpers: text always goes in as text, never as markup.
  function attrs(e, a) {
    for (const [k, v] of Object.entries(a || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    return e;
  }
  function add(e, kids) {
    for (const k of kids.flat()) if (k !== null && k !== undefined && k !== false) e.append(k);
    return e;
  }
  const el = (tag, a, ...kids) => add(attrs(document.createElement(tag), a), kids);
  const sv = (tag, a, ...kids) => add(attrs(document.createElementNS(SVG, tag), a), kids);

  // ---- formatting
  const short = (id) => (id || '').slice(-6);
  const nameOf = (id) => names.get(id) || short(id);
  const pct = (x) => (x === null || x === undefined ? '–' : `${Math.round(x * 100)} %`);
  function bytes(b) {
    if (!b) return '0 B';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    const i = Math.min(u.length - 1, Math.floor(Math.log(b) / Math.log(1024)));
    const v = b / 1024 ** i;
    return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${u[i]}`;
  }
  function ms(v) {
    if (v === null || v === undefined) return '–';
    return v < 1 ? `${v.toFixed(2)} ms` : v < 100 ? `${v.toFixed(1)} ms` : `${Math.round(v)} ms`;
  }
  function rate(mbps) {
    if (!mbps) return '– Mb/s';
    return mbps >= 1000 ? `${(mbps / 1000).toFixed(1)} Gb/s` : `${mbps.toFixed(0)} Mb/s`;
  }
  function ago(msAt) {
    const s = Math.max(0, (Date.now() - msAt) / 1000);
    return s < 90 ? `${Math.round(s)} s` : s < 5400 ? `${Math.round(s / 60)} min` : `${(s / 3600).toFixed(1)} h`;
  }
  const secs = (s) => (s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`);
  const tps = (x) => (x ? `${x.toFixed(1)} tok/s` : '–');

  // ---- the API, with the token when there is one
  function headers(extra) {
    const h = Object.assign({}, extra);
    if (token) h.Authorization = `Bearer ${token}`;
    return h;
  }
  async function errorText(r) {
    try {
      const v = await r.json();
      return (v.error && v.error.message) || `${r.status} ${r.statusText}`;
    } catch (_) {
      return `${r.status} ${r.statusText}`;
    }
  }
  async function api(path, opts) {
    const o = Object.assign({}, opts || {});
    o.headers = headers(o.headers);
    const r = await fetch(path, o);
    if (r.status === 401 || r.status === 403) askForToken(r.status);
    return r;
  }

  // ---- token
  function askForToken(status) {
    $('token-form').hidden = false;
    $('token-why').textContent = status === 403
      ? 'The token given is not an admin token; the dashboard needs one (hearth token create --scope admin).'
      : token
        ? 'The token given is not valid here (unknown or revoked). Paste another one.'
        : 'This node\'s API needs a token. Create one on the node with `hearth token create --scope admin` and paste it here; it stays in this browser.';
  }
  $('token-toggle').addEventListener('click', () => { $('token-form').hidden = !$('token-form').hidden; });
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    token = $('token').value.trim();
    if (token) localStorage.setItem(TOKEN_KEY, token); else localStorage.removeItem(TOKEN_KEY);
    $('token').value = '';
    $('token-form').hidden = true;
    connect();
  });
  $('token-forget').addEventListener('click', () => {
    token = '';
    localStorage.removeItem(TOKEN_KEY);
    connect();
  });

  // ---- live snapshots
  let events = null; // AbortController of the open stream
  let backoff = 500;
  let retry = null;
  function setConn(state, text) {
    const c = $('conn');
    c.dataset.state = state;
    c.textContent = text;
  }
  function onBlock(block) {
    let name = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? '' : line.slice(i + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') name = value;
      else if (field === 'data') data.push(value);
    }
    if (name === 'snapshot' && data.length) render(JSON.parse(data.join('\n')));
  }
  async function connect() {
    clearTimeout(retry);
    if (events) events.abort();
    const ctl = new AbortController();
    events = ctl;
    setConn('connecting', 'connecting…');
    try {
      const r = await fetch('/api/events', {
        headers: headers({ Accept: 'text/event-stream' }), signal: ctl.signal, cache: 'no-store',
      });
      if (r.status === 401 || r.status === 403) {
        askForToken(r.status);
        setConn('bad', r.status === 401 ? 'token needed' : 'admin token needed');
        return; // until a token is given
      }
      if (!r.ok || !r.body) throw new Error(await errorText(r));
      setConn('live', 'live');
      backoff = 500;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, '\n');
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          try { onBlock(block); } catch (e) { console.error('snapshot', e); }
        }
      }
      throw new Error('the node closed the stream');
    } catch (e) {
      if (ctl.signal.aborted) return;
      setConn('bad', 'reconnecting…');
      retry = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    }
  }
  // A hidden tab gives its stream back (it holds one of the token's request slots), and a
  // shown one catches up at once: the first event of a stream is the whole picture.
  let hiddenTimer = null;
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) {
      hiddenTimer = setTimeout(() => {
        if (events) events.abort();
        events = null;
        setConn('connecting', 'paused');
      }, 30000);
    } else {
      clearTimeout(hiddenTimer);
      if (!events) connect();
    }
  });

  // ---- rendering
  function render(s) {
    snap = s;
    const c = s.cluster;
    for (const n of c.nodes) names.set(n.id, n.name);
    $('node-name').textContent = `${c.node.name} · ${c.node.role} · ${c.nodes.length} node${c.nodes.length === 1 ? '' : 's'}`;
    sample(c);
    topology(c);
    devices(c, s.alerts);
    placement(s.instances);
    alerts(s.alerts);
    chatModels(s.instances);
  }

  function sample(c) {
    for (const n of c.nodes) {
      for (const t of n.telemetry || []) {
        const key = `${n.id}/${t.device}`;
        const list = trends.get(key) || [];
        if (!list.length || t.sampled_ms > list[list.length - 1].t) {
          list.push({ t: t.sampled_ms, c: t.temperature_c, h: t.thermal_headroom });
          if (list.length > TREND) list.shift();
        }
        trends.set(key, list);
      }
    }
  }

  function linkHealth(ls) {
    if (!ls.length) return 'unmeasured';
    const p95 = Math.max(...ls.map((l) => l.rtt_p95_ms));
    const loss = Math.max(...ls.map((l) => l.loss || 0));
    if (p95 > LINK_BAD_MS || loss > LINK_BAD_LOSS) return 'bad';
    if (p95 > LINK_WARN_MS || loss > LINK_WARN_LOSS) return 'warn';
    return 'good';
  }

  function topology(c) {
    const svg = $('topo');
    const nodes = c.nodes.slice().sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    const n = nodes.length;
    const R = n > 1 ? 100 : 0;
    const pos = new Map();
    nodes.forEach((node, i) => {
      const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
      pos.set(node.id, { x: 200 + R * Math.cos(a), y: 145 + R * Math.sin(a), i });
    });
    // One line per pair of members; the state measures each direction on its own.
    const pairs = new Map();
    for (let i = 0; i < n; i++) {
      for (let j = i + 1; j < n; j++) pairs.set([nodes[i].id, nodes[j].id].sort().join(' '), []);
    }
    for (const l of c.links) {
      const k = [l.from, l.to].sort().join(' ');
      if (pairs.has(k)) pairs.get(k).push(l);
    }
    const lines = sv('g', {});
    const labels = sv('g', {});
    for (const [k, ls] of pairs) {
      const [a, b] = k.split(' ').map((id) => pos.get(id));
      const health = linkHealth(ls);
      const title = ls.length
        ? ls.map((l) => `${nameOf(l.from)} → ${nameOf(l.to)}: RTT p50 ${ms(l.rtt_p50_ms)}, p95 ${ms(l.rtt_p95_ms)}, ${rate(l.throughput_mbps)}, loss ${pct(l.loss)}`).join('\n')
        : 'not measured yet';
      lines.append(sv('line', {
        x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: `link ${health}`, 'data-link': k, 'data-health': health,
      }, sv('title', { text: title })));
      if (ls.length) {
        // Neighbours on the circle get their label mid-way; chords nearer one end, so the
        // labels of crossing chords do not land on each other.
        const adjacent = Math.abs(a.i - b.i) === 1 || Math.abs(a.i - b.i) === n - 1;
        const f = adjacent ? 0.5 : 0.32;
        const p95 = Math.max(...ls.map((l) => l.rtt_p95_ms));
        const tp = ls.map((l) => l.throughput_mbps).filter((x) => x);
        const text = `${ms(p95)}${tp.length ? ` · ${rate(Math.min(...tp))}` : ''}`;
        // Beside the line, on the side away from the centre, so labels of lines meeting at a
        // node part and no line runs through its own label.
        const len = Math.hypot(b.x - a.x, b.y - a.y) || 1;
        let nx = -(b.y - a.y) / len, ny = (b.x - a.x) / len;
        const x0 = a.x + (b.x - a.x) * f, y0 = a.y + (b.y - a.y) * f;
        if ((x0 - 200) * nx + (y0 - 145) * ny < 0) { nx = -nx; ny = -ny; }
        labels.append(sv('text', { x: x0 + nx * 8, y: y0 + ny * 8, class: 'link-label', 'data-link': k, text }));
      }
    }
    const dots = sv('g', {});
    for (const node of nodes) {
      const p = pos.get(node.id);
      const coord = node.id === c.coordinator;
      const self = node.id === c.node.id;
      const below = p.y >= 145 || n === 1;
      dots.append(sv('g', { class: `node${coord ? ' coordinator' : ''}`, 'data-node': node.id, 'data-name': node.name },
        sv('title', { text: `${node.name} (${node.id})${coord ? ', coordinator' : ''}${self ? ', this node' : ''}` }),
        sv('circle', { cx: p.x, cy: p.y, r: 18 }),
        sv('text', { x: p.x, y: p.y, class: 'glyph', text: coord ? '★' : self ? '◉' : '' }),
        sv('text', { x: p.x, y: below ? p.y + 32 : p.y - 25, class: 'node-name', text: node.name + (coord && self ? ' ◉' : '') })));
    }
    svg.replaceChildren(lines, labels, dots);
  }

  // Seconds until the headroom reaches 0 on the least-squares line through the samples, as
  // the device_throttle_predicted alert computes it; null when it is not falling.
  function timeToThrottle(list) {
    const pts = list.slice(-FIT).filter((p) => typeof p.h === 'number');
    if (!pts.length) return null;
    const last = pts[pts.length - 1].h;
    if (last <= 0) return 0;
    if (pts.length < 5) return null;
    const t0 = pts[0].t;
    const xs = pts.map((p) => (p.t - t0) / 1000);
    const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
    const my = pts.reduce((a, p) => a + p.h, 0) / pts.length;
    let sxx = 0, sxy = 0;
    pts.forEach((p, i) => { sxx += (xs[i] - mx) ** 2; sxy += (xs[i] - mx) * (p.h - my); });
    if (sxx <= 0) return null;
    const slope = sxy / sxx;
    return slope < 0 ? last / -slope : null;
  }

  function spark(list) {
    const vals = list.map((p) => (typeof p.c === 'number' ? p.c : null)).filter((v) => v !== null);
    if (vals.length < 2) return null;
    const lo = Math.min(...vals), hi = Math.max(...vals), span = hi - lo || 1;
    const pts = vals.map((v, i) => `${(i * 80) / (vals.length - 1)},${17 - ((v - lo) / span) * 16}`).join(' ');
    return sv('svg', { class: 'spark', viewBox: '0 0 80 18', 'aria-label': `temperature ${lo.toFixed(0)}–${hi.toFixed(0)} °C` },
      sv('title', { text: `last ${vals.length} samples: ${lo.toFixed(1)}–${hi.toFixed(1)} °C` }),
      sv('polyline', { points: pts }));
  }

  function meter(fraction, mark, title) {
    const f = Math.max(0, Math.min(1, fraction || 0));
    const fill = el('div', { class: `fill${f > 0.97 ? ' full' : f > 0.9 ? ' high' : ''}` });
    fill.style.width = `${(f * 100).toFixed(1)}%`;
    const m = el('div', { class: 'meter', title }, fill);
    if (mark !== null && mark !== undefined && mark < 1) {
      const k = el('div', { class: 'mark' });
      k.style.left = `${(Math.max(0, mark) * 100).toFixed(1)}%`;
      m.append(k);
    }
    return m;
  }

  function devices(c, alertBook) {
    const predicted = new Map();
    for (const a of alertBook.active) {
      if (a.name === 'device_throttle_predicted' && a.subject.kind === 'device') predicted.set(`${a.subject.node}/${a.subject.device}`, a);
    }
    const cards = c.nodes.slice().sort((a, b) => a.name.localeCompare(b.name)).map((n) => {
      const tel = new Map((n.telemetry || []).map((t) => [t.device, t]));
      const coord = n.id === c.coordinator ? el('span', { class: 'tag', text: 'coordinator' }) : null;
      const self = n.id === c.node.id ? el('span', { class: 'tag', text: 'this node' }) : null;
      const devs = (n.devices || []).map((d) => {
        const t = tel.get(d.id);
        const key = `${n.id}/${d.id}`;
        const total = d.memory_total_bytes || 0;
        const used = t ? t.memory_used_bytes : null;
        const facts = [];
        if (t) {
          facts.push(el('span', { text: `utilisation ${pct(t.utilisation)}` }));
          if (typeof t.temperature_c === 'number') {
            facts.push(el('span', { class: t.throttled ? 'hot' : '', text: `${t.temperature_c.toFixed(0)} °C ` }, spark(trends.get(key) || [])));
          }
          const eta = timeToThrottle(trends.get(key) || []);
          if (t.throttled) facts.push(el('span', { class: 'hot', 'data-throttle': 'now', text: 'throttling' }));
          else if (predicted.has(key) || (eta !== null && eta < 3600)) {
            facts.push(el('span', { class: 'warm', 'data-throttle': eta === null ? '' : Math.round(eta), text: eta === null ? 'throttle predicted' : `throttles in ~${secs(eta)}` }));
          }
          facts.push(el('span', { text: `headroom ${pct(t.thermal_headroom)}` }));
          if (typeof t.battery === 'number') facts.push(el('span', { text: `battery ${pct(t.battery)}${t.on_battery ? ' (on battery)' : ''}` }));
          if (typeof t.power_w === 'number') facts.push(el('span', { text: `${t.power_w.toFixed(0)} W` }));
        } else {
          facts.push(el('span', { class: 'muted', text: 'no telemetry' }));
        }
        return el('div', { class: 'device', 'data-device': d.id, 'data-declared': d.declared ? 'true' : 'false' },
          el('div', {},
            el('span', { class: 'name', text: d.name }),
            (d.backends || []).map((b) => el('span', { class: 'tag', text: b })),
            d.declared ? el('span', { class: 'tag declared', title: 'figures from a device profile this node stands in for', text: 'declared' }) : null),
          meter(total ? (used || 0) / total : 0, total ? d.memory_budget_bytes / total : null,
            'used (bar) and hearth\'s budget (mark) of the device\'s memory'),
          el('div', { class: 'facts' },
            el('span', { text: `memory ${used === null ? '–' : bytes(used)} used · ${bytes(d.memory_budget_bytes)} budget · ${bytes(total)} total` })),
          el('div', { class: 'facts' }, facts),
          d.bandwidth_gbs ? el('div', { class: 'facts muted' }, el('span', { text: `${d.bandwidth_gbs.toFixed(1)} GB/s · ${(d.tflops * 1000).toFixed(0)} GFLOP/s measured` })) : null);
      });
      return el('div', { class: 'card', 'data-node': n.id },
        el('h3', {}, n.name, ' ', coord, self),
        devs.length ? devs : el('p', { class: 'muted', text: 'devices not reported yet' }));
    });
    $('devices-list').replaceChildren(...cards);
  }

  function stateText(st) {
    if (!st) return '';
    if (st.state === 'loading') return `loading ${Math.round((st.progress || 0) * 100)} %`;
    if (st.state === 'failed') return `failed: ${st.reason}`;
    return st.state;
  }

  // A bar of the model's layers, one segment per stage, widths in proportion to layer counts.
  function layerBar(stages) {
    const total = Math.max(1, ...stages.map((s) => s.end_layer));
    const segs = stages.map((s) => {
      const label = `${s.node_name || nameOf(s.node)} ${s.first_layer}..${s.end_layer}`;
      const st = s.status ? stateText(s.status) : '';
      const seg = el('div', {
        class: `seg ${s.status ? s.status.state : ''}`, title: `${label} on ${s.device}${st ? ` — ${st}` : ''}`,
        'data-node': s.node, 'data-first': s.first_layer, 'data-end': s.end_layer,
      }, el('span', { class: 'label', text: label }), st ? el('span', { class: 'st', text: st }) : null);
      seg.style.width = `${((100 * (s.end_layer - s.first_layer)) / total).toFixed(3)}%`;
      if (s.status && s.status.state === 'loading') {
        const p = el('div', { class: 'progress' });
        p.style.width = `${Math.round((s.status.progress || 0) * 100)}%`;
        seg.append(p);
      }
      return seg;
    });
    return [el('div', { class: 'layers', 'data-layers': total }, segs),
      el('div', { class: 'scale' }, el('span', { text: 'layer 0' }), el('span', { text: `${total}` }))];
  }

  function placement(inst) {
    const list = inst.instances.slice().sort((a, b) => a.model.localeCompare(b.model) || a.id.localeCompare(b.id));
    const rows = list.map((i) => {
      const m = measured.get(i.model);
      return el('div', { class: 'instance', 'data-instance': i.id, 'data-model': i.model, 'data-status': i.status.state },
        el('div', { class: 'inst-head' },
          el('b', { text: i.model }),
          el('span', { class: `status ${i.status.state}`, text: stateText(i.status) }),
          el('span', { class: 'predicted', text: `predicted ${tps(i.predicted_tokens_per_s)}` }),
          m ? el('span', { class: 'measured', title: 'the chat playground\'s last answer on this page', text: `measured ${tps(m.tps)} (chat)` }) : null,
          el('span', { class: 'id muted', text: i.id }),
          el('button', { type: 'button', class: 'ghost', text: 'Unload', onclick: () => unload(i.model) })),
        layerBar(i.stages));
    });
    const placed = new Set(list.map((i) => i.model));
    for (const w of inst.models) {
      if (!placed.has(w.name)) rows.push(el('div', { class: 'instance muted', 'data-model': w.name, text: `${w.name}: waiting for a placement` }));
    }
    $('instances').replaceChildren(...(rows.length ? rows : [el('p', { class: 'muted', text: 'No model is asked for. Load one below.' })]));
    const errs = Object.entries(inst.placement_errors || {}).map(([m, e]) => el('li', { text: `${m}: ${e}` }));
    $('placement-errors').replaceChildren(...errs);
  }

  function subjectText(s) {
    switch (s.kind) {
      case 'device': return `${s.device} on ${nameOf(s.node)}`;
      case 'node': return nameOf(s.node);
      case 'link': return `${nameOf(s.from)} → ${nameOf(s.to)}`;
      case 'instance': return s.instance;
      case 'model': return s.model;
      default: return '';
    }
  }

  function alertItem(a) {
    const when = a.ended_ms
      ? `resolved ${ago(a.ended_ms)} ago after ${secs((a.ended_ms - a.started_ms) / 1000)}`
      : `for ${ago(a.started_ms)}`;
    return el('li', { class: `alert sev-${a.severity}${a.ended_ms ? ' resolved' : ''}`, 'data-name': a.name, 'data-severity': a.severity },
      el('div', {},
        el('span', { class: 'sev', text: a.severity }),
        el('b', { text: a.name }), ' ',
        el('span', { class: 'subject', text: subjectText(a.subject) }), ' ',
        el('span', { class: 'when muted', text: when })),
      el('p', { class: 'msg', text: a.message }));
  }

  function alerts(book) {
    const active = book.active.map(alertItem);
    $('alerts-active').replaceChildren(...(active.length ? active : [el('li', { class: 'muted', text: 'No active alerts.' })]));
    const resolved = book.resolved.slice(0, 30).map(alertItem);
    $('alerts-resolved').replaceChildren(...resolved);
    $('resolved-count').textContent = String(book.resolved.length);
    const badge = $('alert-badge');
    badge.hidden = !book.active.length;
    if (book.active.length) {
      const worst = book.active.some((a) => a.severity === 'critical') ? 'critical'
        : book.active.some((a) => a.severity === 'warning') ? 'warning' : 'info';
      badge.className = `badge ${worst}`;
      badge.textContent = `${book.active.length} alert${book.active.length === 1 ? '' : 's'}`;
    }
  }
  // Relative times stay true between snapshots.
  setInterval(() => { if (snap) alerts(snap.alerts); }, 5000);

  // ---- models: preview and load
  function modelRequest() {
    const body = { model: $('model-spec').value.trim(), placement: $('model-placement').value };
    const ctx = parseInt($('model-context').value, 10);
    if (ctx > 0) body.context = ctx;
    return body;
  }
  function result(...kids) { $('plan-result').replaceChildren(...kids.flat()); }
  $('model-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = modelRequest();
    if (!body.model) return;
    result(el('p', { class: 'muted', text: `Planning ${body.model}… (a model not downloaded yet is pulled first)` }));
    try {
      const r = await api('/api/plan', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      if (!r.ok) { result(el('p', { class: 'error', text: await errorText(r) })); return; }
      const p = await r.json();
      result(el('p', {}, el('b', { text: p.model }), ` · ${p.placement} · context ${p.context} · ${p.layers} layers · predicted `,
        el('b', { class: 'plan-tps', text: tps(p.predicted_tokens_per_s) })),
      layerBar(p.stages),
      el('table', { class: 'plan-stages' },
        el('tr', {}, el('th', { text: 'node' }), el('th', { text: 'device' }), el('th', { text: 'layers' })),
        p.stages.map((s) => el('tr', { 'data-node': s.node },
          el('td', { text: s.node_name || nameOf(s.node) }), el('td', { text: s.device }),
          el('td', { text: `${s.first_layer}..${s.end_layer} (${s.end_layer - s.first_layer})` })))),
      el('p', { class: 'muted', text: 'Nothing was loaded. Load asks the cluster to serve it; its progress shows under Placement.' }));
    } catch (err) {
      result(el('p', { class: 'error', text: String(err) }));
    }
  });
  $('model-load').addEventListener('click', async () => {
    const body = modelRequest();
    if (!body.model) { $('model-spec').reportValidity(); return; }
    result(el('p', { class: 'muted', text: `Asking the cluster to serve ${body.model}…` }));
    try {
      const r = await api('/api/instances', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      if (!r.ok) { result(el('p', { class: 'error', text: await errorText(r) })); return; }
      const v = await r.json();
      result(el('p', { text: `The cluster is asked to serve ${v.model} (${bytes(v.size_bytes)}, ${v.placement}); its stages show under Placement as they load.` }));
    } catch (err) {
      result(el('p', { class: 'error', text: String(err) }));
    }
  });
  async function unload(model) {
    if (!window.confirm(`Stop serving ${model} on the whole cluster?`)) return;
    const r = await api(`/api/instances/${encodeURIComponent(model)}`, { method: 'DELETE' });
    if (!r.ok) result(el('p', { class: 'error', text: await errorText(r) }));
  }

  // ---- chat playground
  function chatModels(inst) {
    const ready = [...new Set(inst.instances.filter((i) => i.status.state === 'ready').map((i) => i.model))].sort();
    const sel = $('chat-model');
    const current = sel.value;
    const have = [...sel.options].map((o) => o.value);
    if (have.join('\n') !== ready.join('\n')) {
      sel.replaceChildren(...ready.map((m) => el('option', { value: m, text: m })));
      if (ready.includes(current)) sel.value = current;
    }
    $('chat-send').disabled = !ready.length || chatBusy;
  }
  let chatBusy = false;
  let chatAbort = null;
  function bubble(role, text) {
    const b = el('div', { class: `msg ${role}`, text });
    $('chat-log').append(b);
    $('chat-log').scrollTop = $('chat-log').scrollHeight;
    return b;
  }
  function chatStats(s) {
    const p = $('chat-stats');
    p.textContent = s.text;
    for (const k of ['ttft', 'tps', 'tokens']) {
      if (s[k] !== undefined) p.dataset[k] = s[k]; else delete p.dataset[k];
    }
  }
  $('chat-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const text = $('chat-input').value.trim();
    const model = $('chat-model').value;
    if (!text || !model || chatBusy) return;
    $('chat-input').value = '';
    chatHistory.push({ role: 'user', content: text });
    bubble('user', text);
    const out = bubble('assistant streaming', '');
    chatBusy = true;
    $('chat-send').disabled = true;
    $('chat-stop').disabled = false;
    const ctl = new AbortController();
    chatAbort = ctl;
    const t0 = performance.now();
    let first = 0, chunks = 0, usage = null, answer = '';
    try {
      const r = await api('/v1/chat/completions', {
        method: 'POST', signal: ctl.signal, headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({
          model, messages: chatHistory, stream: true, stream_options: { include_usage: true },
          max_tokens: parseInt($('chat-max').value, 10) || 128,
          temperature: parseFloat($('chat-temp').value) || 0,
        }),
      });
      if (!r.ok) throw new Error(await errorText(r));
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      let done = false;
      while (!done) {
        const chunk = await reader.read();
        if (chunk.done) break;
        buf += chunk.value;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).trim();
          buf = buf.slice(i + 1);
          if (!line.startsWith('data:')) continue;
          const data = line.slice(5).trim();
          if (data === '[DONE]') { done = true; break; }
          const v = JSON.parse(data);
          if (v.error) throw new Error(v.error.message);
          if (v.usage) usage = v.usage;
          const d = v.choices && v.choices[0] && v.choices[0].delta && v.choices[0].delta.content;
          if (d) {
            if (!first) first = performance.now();
            chunks += 1;
            answer += d;
            out.textContent = answer;
            $('chat-log').scrollTop = $('chat-log').scrollHeight;
            const el2 = (performance.now() - first) / 1000;
            chatStats({ text: `first token after ${Math.round(first - t0)} ms · ${chunks} chunks${el2 > 0 && chunks > 1 ? ` · ${((chunks - 1) / el2).toFixed(1)} tok/s` : ''}`, ttft: Math.round(first - t0) });
          }
        }
      }
    } catch (err) {
      if (!ctl.signal.aborted) {
        out.classList.add('error');
        out.textContent = answer ? `${answer}\n[${err.message}]` : err.message;
      }
    } finally {
      const end = performance.now();
      out.classList.remove('streaming');
      const tokens = usage ? usage.completion_tokens : chunks;
      const decoding = first ? (end - first) / 1000 : 0;
      const rateNow = tokens > 1 && decoding > 0 ? (tokens - 1) / decoding : 0;
      if (first) {
        chatStats({
          text: `first token after ${Math.round(first - t0)} ms · ${tokens} tokens · ${rateNow ? `${rateNow.toFixed(1)} tok/s` : '–'}${ctl.signal.aborted ? ' · stopped' : ''}`,
          ttft: Math.round(first - t0), tps: rateNow.toFixed(2), tokens,
        });
        if (rateNow) measured.set(model, { tps: rateNow, ttft: first - t0, tokens });
        if (snap) placement(snap.instances);
      } else if (!out.textContent) {
        chatStats({ text: 'no answer' });
      }
      if (answer) chatHistory.push({ role: 'assistant', content: answer });
      else chatHistory.pop();
      chatBusy = false;
      chatAbort = null;
      $('chat-stop').disabled = true;
      if (snap) chatModels(snap.instances);
    }
  });
  $('chat-input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('chat-form').requestSubmit(); }
  });
  $('chat-stop').addEventListener('click', () => { if (chatAbort) chatAbort.abort(); });
  $('chat-clear').addEventListener('click', () => {
    chatHistory.length = 0;
    $('chat-log').replaceChildren();
    chatStats({ text: '' });
  });

  connect();
})();
