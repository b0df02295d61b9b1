// Herald's status page (agents/web): polls the admin API with the tab's token and shows what
// one worker is doing. Rates are computed here, from two successive answers of the same worker
// (GET /api/herald/status carries counts since that worker started). Every value shown comes
// from the API, which masks secrets; text is set with textContent only, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "herald.token";
  const params = new URLSearchParams(location.search);
  // ?interval=ms: how often to poll (0.5 s to 60 s; 2 s by default).
  const POLL_MS = Math.min(Math.max(Number(params.get("interval")) || 2000, 500), 60000);
  const WINDOW_SECONDS = 600; // what the charts keep: the last ten minutes
  const FAILURES_SHOWN = 20;
  const COLORS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];

  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem(TOKEN_KEY);
  let timer = null;
  let last = null; // the previous status answer
  let current = null; // the latest one
  let charts = null;
  const series = { t: [], matched: [], delivered: [], deadLettered: [], lag: {} };

  // -- DOM helpers ------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("data-")) node.setAttribute(name, value);
      else node[name] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  function pre(value) {
    const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
    return el("pre", { text });
  }

  function when(ms) {
    return typeof ms === "number" ? new Date(ms).toLocaleTimeString() : "";
  }

  function rate(value) {
    return value === null || value === undefined ? "–" : value.toFixed(2);
  }

  function notice(text) {
    $("notice").textContent = text || "";
  }

  // -- the API ----------------------------------------------------------------------------

  class Unauthorized extends Error {}

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (token) headers["X-Authorization"] = token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = text;
    }
    if (response.status === 401 && path !== "/api/token") {
      logout(`Your token is no longer valid (${(data && data.error) || 401}): log in again.`);
      throw new Unauthorized();
    }
    if (!response.ok) {
      const message = (data && data.message) || `HTTP ${response.status}`;
      const problems = ((data && data.validationErrors) || []).map((e) => e.message);
      const error = new Error([message, ...problems].join("; "));
      error.status = response.status;
      throw error;
    }
    return data;
  }

  // -- logging in and out ---------------------------------------------------------------

  async function login(event) {
    event.preventDefault();
    $("login-error").textContent = "";
    const pasted = $("token").value.trim();
    try {
      if (pasted) {
        token = pasted;
      } else {
        const answer = await api("POST", "/api/token", {
          keyId: $("key-id").value.trim(),
          keySecret: $("key-secret").value,
        });
        token = answer.token;
      }
      const user = await api("GET", "/api/token/userInfo");
      sessionStorage.setItem(TOKEN_KEY, token);
      $("key-secret").value = "";
      $("token").value = "";
      show(user);
    } catch (error) {
      if (!(error instanceof Unauthorized)) {
        token = null;
        $("login-error").textContent = `Not logged in: ${error.message}`;
      }
    }
  }

  function logout(why) {
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    if (timer) clearTimeout(timer);
    timer = null;
    $("main").hidden = true;
    $("logout").hidden = true;
    $("user").textContent = "";
    $("login").hidden = false;
    $("login-error").textContent = typeof why === "string" ? why : "";
  }

  function show(user) {
    $("login").hidden = true;
    $("main").hidden = false;
    $("logout").hidden = false;
    $("user").textContent = `as ${user.name || user.id}`;
    last = current = null;
    poll();
  }

  // -- polling ------------------------------------------------------------------------------

  async function poll() {
    timer = null;
    try {
      const status = await api("GET", "/api/herald/status");
      take(status);
      notice(status.ready ? "" : "The worker is not ready: handlers loading or no partition assigned.");
      await failures(status);
    } catch (error) {
      if (error instanceof Unauthorized) return;
      notice(`The worker did not answer: ${error.message}. Trying again.`);
    }
    if (token) timer = setTimeout(poll, POLL_MS);
  }

  function take(status) {
    last = current;
    current = status;
    if (last && last.worker.id !== status.worker.id) {
      // Another worker answered (a load balancer): its counts are its own, start again.
      last = null;
      for (const key of ["t", "matched", "delivered", "deadLettered"]) series[key].length = 0;
      series.lag = {};
      notice(`Now showing worker ${status.worker.id}: rates start again.`);
    }
    $("worker").textContent = `worker ${status.worker.id}`;
    const rates = handlerRates(last, status);
    record(status, rates);
    renderIntegrations(status, last);
    renderHandlers(status, rates);
    fillPickers(status);
    draw(status);
  }

  function seconds(a, b) {
    return (b.worker.now - a.worker.now) / 1000;
  }

  function perSecond(before, after, span) {
    if (before === undefined || span <= 0 || after < before) return null;
    return (after - before) / span;
  }

  function handlerRates(before, after) {
    const out = {};
    const previous = {};
    if (before) for (const h of before.handlers) previous[h.name] = h;
    const span = before ? seconds(before, after) : 0;
    for (const h of after.handlers) {
      const p = previous[h.name] || {};
      out[h.name] = {
        matched: perSecond(p.matched, h.matched, span),
        delivered: perSecond(p.delivered, h.delivered, span),
        deadLettered: perSecond(p.deadLettered, h.deadLettered, span),
      };
    }
    return out;
  }

  function record(status, rates) {
    if (!last) return;
    const sum = (field) => {
      let total = 0;
      for (const r of Object.values(rates)) total += r[field] || 0;
      return total;
    };
    series.t.push(status.worker.now / 1000);
    series.matched.push(sum("matched"));
    series.delivered.push(sum("delivered"));
    series.deadLettered.push(sum("deadLettered"));
    for (const i of status.integrations) {
      if (!series.lag[i.name]) series.lag[i.name] = series.t.slice(0, -1).map(() => null);
      series.lag[i.name].push(i.lagTotal);
    }
    const oldest = status.worker.now / 1000 - WINDOW_SECONDS;
    while (series.t.length && series.t[0] < oldest) {
      series.t.shift();
      series.matched.shift();
      series.delivered.shift();
      series.deadLettered.shift();
      for (const values of Object.values(series.lag)) values.shift();
    }
  }

  // -- tables -------------------------------------------------------------------------------

  function renderIntegrations(status, before) {
    const previous = {};
    if (before) for (const i of before.integrations) previous[i.name] = i;
    const span = before ? seconds(before, status) : 0;
    const body = clear($("integrations").tBodies[0]);
    for (const i of status.integrations) {
      const p = previous[i.name] || {};
      const partitions = i.lag.map((row) => `${row.topic}/${row.partition}: ${row.lag}`);
      const stages = Object.entries(i.deadLetters.byStage).map(([s, n]) => `${s} ${n}`);
      const flags = [];
      if (i.stalledPartitions) flags.push(`${i.stalledPartitions} stalled`);
      if (i.unreadablePartitions) flags.push(`${i.unreadablePartitions} unreadable`);
      body.append(
        el(
          "tr",
          { "data-integration": i.name },
          el("td", {}, i.name, i.home ? el("span", { class: "tag", text: "home" }) : null),
          el("td", {}, el("span", { class: `state state-${i.state}`, text: i.state, "data-field": "state" })),
          el("td", { class: "num", "data-field": "consumedRate", text: rate(perSecond(p.consumed, i.consumed, span)) }),
          el("td", { class: "num", "data-field": "lag", text: String(i.lagTotal) }),
          el("td", { class: "small", text: partitions.join(", ") || "–" }),
          el("td", { class: "num", "data-field": "deadLetters", text: String(i.deadLetters.total) }),
          el("td", { class: "small", text: stages.join(", ") || "–" }),
          el("td", { class: "small error", text: [i.error, ...flags].filter(Boolean).join("; ") }),
        ),
      );
    }
  }

  function renderHandlers(status, rates) {
    const body = clear($("handlers").tBodies[0]);
    if (!status.handlers.length) {
      body.append(el("tr", {}, el("td", { colSpan: 10, class: "muted", text: "No handler you may read." })));
    }
    for (const h of status.handlers) {
      const r = rates[h.name];
      const cell = (field, text) => el("td", { class: "num", "data-field": field, text });
      body.append(
        el(
          "tr",
          { "data-handler": h.name, class: h.active ? "" : "inactive" },
          el("td", {}, h.name, h.active ? null : el("span", { class: "tag", text: "inactive" })),
          el("td", { class: "small", text: `${h.integration}:${h.topic}` }),
          cell("matchedRate", rate(r.matched)),
          cell("deliveredRate", rate(r.delivered)),
          cell("deadLetteredRate", rate(r.deadLettered)),
          cell("matched", String(h.matched)),
          cell("conditionFalse", String(h.conditionFalse)),
          cell("delivered", String(h.delivered)),
          cell("deadLettered", String(h.deadLettered)),
          cell("retries", String(h.retries)),
        ),
      );
    }
  }

  async function failures(status) {
    const note = $("failures-note");
    if (!status.history || !status.history.caughtUp) {
      note.textContent = status.history
        ? `The execution history is still being read (${status.history.records} records so far).`
        : "This worker keeps no execution history.";
      return;
    }
    const query = `limit=${FAILURES_SHOWN}`;
    const [letters, failed] = await Promise.all([
      api("GET", `/api/event/execution?status=DEAD_LETTERED&${query}`),
      api("GET", `/api/event/execution?status=FAILED&${query}`),
    ]);
    const rows = [...letters, ...failed].sort((a, b) => b.created - a.created).slice(0, FAILURES_SHOWN);
    note.textContent = rows.length ? "" : "No failure in the execution history.";
    const body = clear($("failures").tBodies[0]);
    for (const e of rows) {
      const source = e.source || {};
      const link = el("button", { type: "button", class: "link", text: e.messageId || "–" });
      link.addEventListener("click", () => findSource(source));
      body.append(
        el(
          "tr",
          { "data-failure": e.id },
          el("td", { class: "small", text: when(e.created) }),
          el("td", { text: e.name || "(no handler)" }),
          el("td", {}, el("span", { class: `status status-${e.status}`, text: e.status })),
          el("td", { text: e.stage || e.action || "" }),
          el("td", { class: "small" }, link),
          el("td", { class: "small reason", text: e.reason || e.error || "" }),
        ),
      );
    }
  }

  // -- charts (uPlot, vendored: agents/web/static/vendor/uplot) ---------------------------

  function chartWidth(node) {
    return Math.max(node.clientWidth - 8, 280);
  }

  function makeCharts(status) {
    const rateNode = $("rates-chart");
    const lagNode = $("lag-chart");
    const axes = (label) => [{}, { label, size: 60 }];
    const rates = new uPlot(
      {
        width: chartWidth(rateNode),
        height: 220,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, 1)] } },
        axes: axes("per second"),
        legend: { live: false },
        series: [
          {},
          { label: "matched", stroke: COLORS[0], width: 2 },
          { label: "delivered", stroke: COLORS[1], width: 2, dash: [8, 6] },
          { label: "dead-lettered", stroke: COLORS[2], width: 2 },
        ],
      },
      [[], [], [], []],
      rateNode,
    );
    const names = status.integrations.map((i) => i.name);
    const lag = new uPlot(
      {
        width: chartWidth(lagNode),
        height: 220,
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, 10)] } },
        axes: axes("records"),
        legend: { live: false },
        series: [{}, ...names.map((name, n) => ({ label: name, stroke: COLORS[n % COLORS.length], width: 2 }))],
      },
      [[], ...names.map(() => [])],
      lagNode,
    );
    window.addEventListener("resize", () => {
      rates.setSize({ width: chartWidth(rateNode), height: 220 });
      lag.setSize({ width: chartWidth(lagNode), height: 220 });
    });
    return { rates, lag, names };
  }

  function draw(status) {
    if (typeof uPlot === "undefined") return;
    if (!charts) charts = makeCharts(status);
    charts.rates.setData([series.t, series.matched, series.delivered, series.deadLettered]);
    charts.lag.setData([series.t, ...charts.names.map((name) => series.lag[name] || series.t.map(() => null))]);
  }

  // -- pickers of the forms -----------------------------------------------------------------

  function fill(select, values, labels) {
    const chosen = select.value;
    const now = values.join("\n");
    if (select.dataset.values === now) return;
    select.dataset.values = now;
    clear(select);
    values.forEach((value, n) => select.append(el("option", { value, text: labels ? labels[n] : value })));
    if (values.includes(chosen)) select.value = chosen;
  }

  function fillPickers(status) {
    const names = status.integrations.map((i) => i.name);
    const home = (status.integrations.find((i) => i.home) || {}).name;
    for (const id of ["find-integration", "try-integration"]) {
      const select = $(id);
      const fresh = !select.dataset.values;
      fill(select, names);
      if (fresh && home) select.value = home;
    }
    fill(
      $("try-handler"),
      status.handlers.map((h) => h.name),
      status.handlers.map((h) => `${h.name} (${h.integration}:${h.topic})`),
    );
  }

  // -- one message's history ------------------------------------------------------------

  function findSource(source) {
    if (source.integration) $("find-integration").value = source.integration;
    $("find-topic").value = source.topic || "";
    $("find-partition").value = source.partition ?? 0;
    $("find-offset").value = source.offset ?? 0;
    $("find-form").requestSubmit();
    $("find-form").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  async function find(event) {
    event.preventDefault();
    $("find-error").textContent = "";
    const result = clear($("find-result"));
    const query = new URLSearchParams({
      integration: $("find-integration").value,
      topic: $("find-topic").value.trim(),
      partition: $("find-partition").value,
      offset: $("find-offset").value,
    });
    try {
      const found = await api("GET", `/api/event/execution/source?${query}`);
      result.append(el("h3", { text: found.messageId }));
      for (const letter of found.deadLetters) result.append(entry(letter));
      for (const h of found.handlers) {
        const block = el("div", { class: "handler", "data-handler": h.name });
        block.append(el("h4", {}, h.name, el("span", { class: "outcome", text: h.outcome })));
        if (h.counts && h.counts.matched !== null) {
          block.append(
            el("p", {
              class: "muted small",
              text: `matched ${h.counts.matched}, condition false ${h.counts.conditionFalse} (${h.counts.scope})`,
            }),
          );
        }
        for (const e of [...h.executions, ...h.deadLetters]) block.append(entry(e));
        result.append(block);
      }
      if (!found.handlers.length && !found.deadLetters.length) {
        result.append(el("p", { class: "muted", text: "No handler you may read consumes this topic." }));
      }
    } catch (error) {
      if (!(error instanceof Unauthorized)) $("find-error").textContent = error.message;
    }
  }

  function entry(e) {
    const what = e.kind === "deadLetter" ? `dead letter (${e.stage})` : `${e.action || "action"} #${e.actionIndex ?? ""}`;
    const line = el(
      "div",
      { class: "entry", "data-status": e.status },
      el("span", { class: `status status-${e.status}`, text: e.status }),
      ` ${what} · ${e.attempts} attempt(s) · ${when(e.created)}`,
    );
    const reason = e.reason || e.error;
    if (reason) line.append(el("div", { class: "reason small", text: reason }));
    if (e.result !== undefined && e.result !== null) line.append(pre(e.result));
    return line;
  }

  // -- the dry run --------------------------------------------------------------------------

  async function dryRun(event) {
    event.preventDefault();
    $("try-error").textContent = "";
    const result = clear($("try-result"));
    const body = {};
    const pick = document.querySelector('input[name="pick"]:checked').value;
    if (pick === "handler") body.handler = $("try-handler").value;
    else {
      body.topic = $("try-topic").value.trim();
      body.integration = $("try-integration").value;
    }
    const text = $("try-message").value;
    try {
      body.message = JSON.parse(text);
    } catch {
      body.message = text; // not JSON: the record's text, as a STRING integration reads it
    }
    const key = $("try-key").value;
    if (key) body.key = key;
    const headers = $("try-headers").value.trim();
    try {
      if (headers) body.headers = JSON.parse(headers);
    } catch (error) {
      $("try-error").textContent = `Headers are not a JSON object: ${error.message}`;
      return;
    }
    try {
      const report = await api("POST", "/api/herald/try", body);
      renderReport(result, report, typeof body.message === "string");
    } catch (error) {
      if (!(error instanceof Unauthorized)) $("try-error").textContent = error.message;
    }
  }

  function renderReport(result, report, asText) {
    const m = report.message;
    result.append(
      el("p", {
        class: "muted small",
        text: `${m.messageId}${asText ? " · sent as text" : ""} · nothing delivered`,
      }),
    );
    if (report.deadLetter) result.append(letter(report.deadLetter));
    for (const h of report.handlers) {
      const condition = h.matched === true ? "true" : h.matched === false ? "false" : "not evaluated";
      const block = el("div", { class: "handler", "data-handler": h.name });
      block.append(
        el("h4", {}, h.name, el("span", { class: `outcome cond-${condition.replace(" ", "-")}`, "data-field": "condition", text: `condition ${condition}` })),
      );
      if (h.deadLetter) block.append(letter(h.deadLetter));
      for (const a of h.actions) block.append(action(a));
      result.append(block);
    }
  }

  function letter(l) {
    return el("div", { class: "entry" }, el("span", { class: "status status-DEAD_LETTERED", text: "DEAD LETTER" }), ` ${l.stage}: `, el("span", { class: "reason", text: l.reason }));
  }

  function action(a) {
    const block = el("div", { class: "action" });
    block.append(el("div", { class: "small" }, el("b", { text: `#${a.index} ${a.action}` }), a.target ? ` → ${a.target}` : "", a.deliveryId ? ` · delivery id ${a.deliveryId}` : ""));
    if (a.deadLetter) block.append(letter(a.deadLetter));
    for (const r of a.requests || []) {
      const request = el("div", { class: "request", "data-field": "request" });
      request.append(el("div", { class: "line", text: `${r.method} ${r.url}` }));
      const rows = Object.entries(r.headers).map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: v })));
      if (rows.length) request.append(el("table", { class: "headers" }, el("tbody", {}, ...rows)));
      if (r.body !== null && r.body !== undefined) request.append(pre(r.body));
      block.append(request);
    }
    if (a.publish) {
      const p = a.publish;
      block.append(el("div", { class: "line", text: `publish to ${p.integration}:${p.topic} key ${p.key ?? "(none)"}` }), pre(p.value));
    }
    if (a.incomplete) block.append(el("p", { class: "muted small", text: a.incomplete }));
    return block;
  }

  // -- start ----------------------------------------------------------------------------------

  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout("Logged out."));
  $("find-form").addEventListener("submit", find);
  $("try-form").addEventListener("submit", dryRun);

  if (token) {
    api("GET", "/api/token/userInfo").then(show, (error) => {
      if (!(error instanceof Unauthorized)) logout(`Could not check the token: ${error.message}`);
    });
  } else {
    logout();
  }
})();
