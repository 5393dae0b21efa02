// The seat-map page: a single page for `/` (the shows), `/shows/{id}` (a show's seat
// map, holds, checkout, tickets, waitlist) and `/organizer/shows/{id}` (the live sales
// dashboard). It uses only the documented JSON API (`/openapi.json`).

import { call, hasRole, imageUrl, messageFor, register, session, signIn, signOut, newKey } from "./api.js";
import { SeatMap, legend } from "./seatmap.js";
import { clearNotice, countdown, fromMinor, h, minor, money, notify, when } from "./views.js";

const main = document.getElementById("main");
/** Undo functions of the current view (timers, streams), run when leaving it. */
let cleanup = [];
/** Seats one hold may have (the API's limit). */
const SEATS_PER_HOLD_MAX = 10;
/** How often an open waitlist entry is checked for an offer. */
const WAITLIST_POLL_MS = 1500;

function onLeave(fn) {
  cleanup.push(fn);
}

function link(href, ...text) {
  return h("a", { href, "data-link": true }, ...text);
}

function navigate(path) {
  history.pushState({}, "", path);
  route();
}

document.addEventListener("click", (e) => {
  const a = e.target.closest?.("a[data-link]");
  if (!a || e.metaKey || e.ctrlKey || e.shiftKey || e.button !== 0) return;
  e.preventDefault();
  navigate(a.getAttribute("href"));
});
window.addEventListener("popstate", route);
window.addEventListener("session", renderAccount);

function fail(problem) {
  notify(messageFor(problem), "error");
}

function stored(kind, showId) {
  return `boxoffice.${kind}.${showId}`;
}

// --- Account -------------------------------------------------------------------------

function renderAccount() {
  const nav = document.getElementById("account");
  const s = session();
  if (s) {
    const staff = s.roles.filter((r) => r !== "buyer");
    nav.replaceChildren(
      h("span", { class: "who", id: "who" }, `Signed in as ${s.email}${staff.length ? ` (${staff.join(", ")})` : ""}`),
      h("button", { type: "button", id: "sign-out", onclick: () => { signOut(); notify("You are signed out."); route(); } }, "Sign out"),
    );
  } else {
    nav.replaceChildren(
      h("button", { type: "button", id: "open-sign-in", onclick: () => {
        const existing = document.getElementById("auth-card");
        if (existing) { existing.querySelector("input")?.focus(); return; }
        main.prepend(authCard(() => route()));
        document.getElementById("auth-email").focus();
      } }, "Sign in"),
    );
  }
}

/** Sign in or sign up; `done` runs once signed in. */
function authCard(done, intro) {
  const email = h("input", { id: "auth-email", type: "email", autocomplete: "username", required: true });
  const password = h("input", { id: "auth-password", type: "password", autocomplete: "current-password", required: true, minlength: 8 });
  const name = h("input", { id: "auth-name", type: "text", autocomplete: "name" });
  const busy = (on) => card.querySelectorAll("button").forEach((b) => (b.disabled = on));
  const attempt = async (fn) => {
    busy(true);
    try {
      await fn();
      clearNotice();
      notify(`Welcome, ${session().email}.`, "ok");
      done();
    } catch (p) {
      fail(p);
    } finally {
      busy(false);
    }
  };
  const card = h("section", { class: "card auth", id: "auth-card", "aria-labelledby": "auth-title" },
    h("h2", { id: "auth-title" }, "Sign in or create an account"),
    intro ? h("p", { class: "muted" }, intro) : null,
    h("form", { onsubmit: (e) => { e.preventDefault(); attempt(() => signIn(email.value.trim(), password.value)); } },
      h("label", {}, "Email", email),
      h("label", {}, "Password (at least 8 characters)", password),
      h("label", {}, "Your name (only for a new account)", name),
      h("div", { class: "row" },
        h("button", { type: "submit", id: "sign-in" }, "Sign in"),
        h("button", { type: "button", class: "secondary", id: "sign-up", onclick: () => {
          if (!email.reportValidity() || !password.reportValidity()) return;
          attempt(() => register(email.value.trim(), password.value, name.value.trim()));
        } }, "Create account"),
      ),
    ),
  );
  return card;
}

// --- Router --------------------------------------------------------------------------

function route() {
  for (const fn of cleanup.splice(0)) fn();
  renderAccount();
  const path = location.pathname;
  let m;
  if (path === "/") return showList();
  if ((m = path.match(/^\/shows\/([^/]+)$/))) return showPage(decodeURIComponent(m[1]));
  if ((m = path.match(/^\/organizer\/shows\/([^/]+)$/))) return dashboard(decodeURIComponent(m[1]));
  main.replaceChildren(h("p", {}, "There is no such page. ", link("/", "See all shows")));
}

// --- Shows ---------------------------------------------------------------------------

function showList() {
  document.title = "Shows · Boxoffice";
  const params = new URLSearchParams(location.search);
  const q = h("input", { id: "search-q", type: "search", name: "q", value: params.get("q") || "", placeholder: "Show or venue" });
  const city = h("input", { id: "search-city", type: "text", name: "city", value: params.get("city") || "" });
  const list = h("ul", { class: "shows", id: "shows", "aria-live": "polite" });
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "More shows");
  let cursor = null;
  const load = async (append) => {
    const query = new URLSearchParams({ limit: "24" });
    if (q.value.trim()) query.set("q", q.value.trim());
    if (city.value.trim()) query.set("city", city.value.trim());
    if (append && cursor) query.set("cursor", cursor);
    try {
      const { body } = await call("GET", `/v1/shows?${query}`, { auth: false });
      if (!append) list.replaceChildren();
      for (const show of body.data) list.append(showItem(show));
      if (!list.children.length) list.append(h("li", {}, "No shows match."));
      cursor = body.next_cursor;
      more.hidden = !cursor;
    } catch (p) {
      fail(p);
    }
  };
  more.addEventListener("click", () => load(true));
  main.replaceChildren(
    h("h1", {}, "Shows"),
    h("form", { class: "search", role: "search", onsubmit: (e) => {
      e.preventDefault();
      const query = new URLSearchParams();
      if (q.value.trim()) query.set("q", q.value.trim());
      if (city.value.trim()) query.set("city", city.value.trim());
      history.replaceState({}, "", `/${query.toString() ? `?${query}` : ""}`);
      load(false);
    } },
      h("label", {}, "Search", q),
      h("label", {}, "City", city),
      h("button", { type: "submit" }, "Search"),
    ),
    list,
    more,
  );
  load(false);
}

function showItem(show) {
  const capacity = show.sections.reduce((n, s) => n + s.capacity, 0);
  const available = show.sections.reduce((n, s) => n + s.available, 0);
  const from = show.price_tiers.reduce((lo, t) => (lo === null || minor(t.price.amount) < minor(lo.amount) ? t.price : lo), null);
  return h("li", { dataset: { show: show.show_id } },
    link(`/shows/${encodeURIComponent(show.show_id)}`, h("span", { class: "title" }, show.name)),
    h("div", {}, `${show.venue.name}, ${show.venue.city}`),
    h("div", { class: "muted" }, when(show.starts_at)),
    h("div", { class: "row" },
      h("span", { class: `badge ${show.status}` }, show.status.replace(/_/g, " ")),
      h("span", {}, `${available} of ${capacity} left`),
      from ? h("span", {}, `from ${money(from)}`) : null,
    ),
    hasRole("organizer") || hasRole("auditor") ? link(`/organizer/shows/${encodeURIComponent(show.show_id)}`, "Sales dashboard") : null,
  );
}

/** How long the page waits before opening the stream again after the server refused it. */
const STREAM_RETRY_MS = 3000;

/**
 * Follows the live seat-map stream of a show: `onSnapshot(map)` for the whole map (first,
 * and after any reconnect), `onSeats(event)` per change. The browser reconnects by itself
 * after a dropped connection; after a refusal (a 503 while the server is full or
 * restarting) EventSource gives up, so the page opens a new one after a pause.
 */
function follow(showId, { onSnapshot, onSeats, status }) {
  let source = null;
  let retry = null;
  let left = false;
  const open = () => {
    source = new EventSource(`/v1/shows/${encodeURIComponent(showId)}/seatmap/stream`);
    source.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
    source.addEventListener("seats", (e) => onSeats(JSON.parse(e.data)));
    source.addEventListener("open", () => { status.dataset.state = "live"; status.textContent = "Live"; });
    source.addEventListener("error", () => {
      status.dataset.state = "down";
      status.textContent = "Reconnecting…";
      if (source.readyState === EventSource.CLOSED && !left) {
        clearTimeout(retry);
        retry = setTimeout(open, STREAM_RETRY_MS);
      }
    });
  };
  open();
  onLeave(() => {
    left = true;
    clearTimeout(retry);
    source?.close();
  });
}

async function loadShow(showId) {
  try {
    return (await call("GET", `/v1/shows/${encodeURIComponent(showId)}`, { auth: false })).body;
  } catch (p) {
    main.replaceChildren(h("h1", {}, "Show not found"), h("p", {}, messageFor(p), " ", link("/", "See all shows")));
    return null;
  }
}

function showHeader(show, extra) {
  return h("header", { class: "card" },
    h("h1", { id: "show-name" }, show.name),
    h("div", {}, `${show.venue.name}, ${show.venue.city} · ${when(show.starts_at)}`),
    h("div", { class: "row" }, h("span", { class: `badge ${show.status}`, id: "show-status" }, show.status.replace(/_/g, " ")), extra),
  );
}

function seatNames(map, reservation) {
  if (reservation.seats?.length) {
    return reservation.seats.map((id) => {
      const s = map?.seats.get(id);
      return s ? `Row ${s.row} seat ${s.number}` : id;
    });
  }
  const name = map?.sectionName.get(reservation.section) || reservation.section;
  return [`${reservation.quantity} × ${name} (general admission)`];
}

// --- A show: buy seats ---------------------------------------------------------------

async function showPage(showId) {
  main.replaceChildren(h("p", { class: "muted" }, "Loading the show…"));
  const show = await loadShow(showId);
  if (!show) return;
  document.title = `${show.name} · Boxoffice`;
  const state = { show, reservation: null, expired: null, order: null, entry: null, soldOut: false, busy: false };
  const side = h("div", { class: "side", id: "side" });
  const live = h("span", { class: "live", id: "live", "data-state": "connecting" }, "Connecting…");
  const summary = h("p", { class: "muted", id: "availability" });
  const maxPerHold = Math.min(SEATS_PER_HOLD_MAX, show.limits.max_tickets_per_user);
  let stopCountdown = () => {};
  onLeave(() => stopCountdown());

  const map = new SeatMap(show, {
    interactive: true,
    onToggle: (id, on, message) => {
      if (message) {
        notify(message);
        return false;
      }
      if (on && !session()) {
        notify("Sign in first to choose seats.");
        document.getElementById("auth-email")?.focus();
        return false;
      }
      if (on && (state.reservation || state.order)) {
        notify(state.order ? "Choose “Buy more tickets” first." : "You already hold seats: pay for them or cancel the hold first.");
        return false;
      }
      if (on && map.selected.size >= maxPerHold) {
        notify(`You can choose up to ${maxPerHold} seats at a time.`);
        return false;
      }
      queueMicrotask(renderSide);
      return true;
    },
    onGa: (section) => {
      const input = document.getElementById(`ga-qty-${section}`);
      if (input) input.focus();
      else notify("Sign in first, then choose how many places you want.");
    },
  });

  const organizerLink = hasRole("organizer") || hasRole("auditor")
    ? link(`/organizer/shows/${encodeURIComponent(show.show_id)}`, "Sales dashboard")
    : null;
  main.replaceChildren(
    showHeader(show, organizerLink),
    h("div", { class: "layout" },
      h("section", { class: "card", "aria-labelledby": "map-title" },
        h("div", { class: "row spread" }, h("h2", { id: "map-title" }, "Seat map"), live),
        summary,
        map.root,
        legend(show, map.tierColour),
      ),
      side,
    ),
  );

  const updateSummary = () => {
    const c = map.counts();
    summary.textContent = c.available === 0 ? "Sold out: every seat is held or sold." : `${c.available} of ${c.capacity} places available.`;
    const soldOut = map.soldOut();
    if (soldOut !== state.soldOut) {
      state.soldOut = soldOut;
      renderSide();
    }
  };
  const lost = (ids) => {
    if (!ids.length) return;
    const names = ids.map((id) => { const s = map.seats.get(id); return `row ${s.row} seat ${s.number}`; });
    notify(`Sorry, ${names.join(", ")} ${ids.length > 1 ? "were" : "was"} just taken by someone else.`, "error");
    renderSide();
  };
  let loaded = false;
  follow(show.show_id, {
    status: live,
    onSnapshot: (m) => {
      lost(map.load(m));
      loaded = true;
      updateSummary();
      renderSide();
    },
    onSeats: (e) => {
      if (!loaded) return;
      lost(map.apply(e));
      updateSummary();
      if (state.entry) checkEntry();
    },
  });

  // What this browser had going for the show: a hold or an order, a waitlist entry.
  const setReservation = (r) => {
    state.reservation = r;
    if (r) localStorage.setItem(stored("rsv", show.show_id), r.reservation_id);
    else localStorage.removeItem(stored("rsv", show.show_id));
  };
  const setEntry = (e) => {
    state.entry = e;
    if (e) localStorage.setItem(stored("wle", show.show_id), e.entry_id);
    else localStorage.removeItem(stored("wle", show.show_id));
  };

  async function restore() {
    if (!session()) return;
    const rsv = localStorage.getItem(stored("rsv", show.show_id));
    if (rsv) {
      try {
        const { body } = await call("GET", `/v1/reservations/${encodeURIComponent(rsv)}`);
        if (body.status === "held" || body.status === "payment_pending") state.reservation = body;
        else if (body.status === "confirmed" && body.order_id) await showOrder(body.order_id);
        else setReservation(null);
      } catch (_) {
        setReservation(null);
      }
    }
    const wle = localStorage.getItem(stored("wle", show.show_id));
    if (wle) {
      try {
        const { body } = await call("GET", `/v1/waitlist/${encodeURIComponent(wle)}`);
        if (body.status === "waiting" || body.status === "offered") state.entry = body;
        else setEntry(null);
      } catch (_) {
        setEntry(null);
      }
    }
  }

  async function showOrder(orderId) {
    const { body } = await call("GET", `/v1/orders/${encodeURIComponent(orderId)}`);
    state.order = body;
    state.reservation = null;
    localStorage.setItem(stored("rsv", show.show_id), body.reservation_id);
  }

  async function act(button, fn) {
    if (state.busy) return;
    state.busy = true;
    const label = button?.textContent;
    if (button) { button.disabled = true; button.textContent = "Working…"; }
    try {
      await fn();
    } catch (p) {
      fail(p);
    } finally {
      state.busy = false;
      if (button) { button.disabled = false; button.textContent = label; }
      renderSide();
    }
  }

  async function hold(body, button) {
    await act(button, async () => {
      const { body: r } = await call("POST", `/v1/shows/${encodeURIComponent(show.show_id)}/holds`, { body });
      map.clearSelection();
      state.expired = null;
      setReservation(r);
      notify(`Held for you: ${seatNames(map, r).join(", ")}. Pay before the countdown ends.`, "ok");
    });
  }

  let expiryCheck = null;
  onLeave(() => clearTimeout(expiryCheck));
  /** The countdown reached zero: wait for the server to expire the hold, then say so. */
  function holdTimeUp() {
    const r = state.reservation;
    if (!r) return;
    const deadline = Date.now() + 15000;
    const check = async () => {
      if (state.reservation !== r) return;
      try {
        const { body } = await call("GET", `/v1/reservations/${encodeURIComponent(r.reservation_id)}`);
        if (body.status === "held" && Date.now() < deadline) {
          expiryCheck = setTimeout(check, 500);
          return;
        }
        if (body.status === "confirmed" && body.order_id) {
          await showOrder(body.order_id);
        } else if (body.status === "held" || body.status === "payment_pending") {
          state.reservation = body;
        } else {
          setReservation(null);
          state.expired = body;
          notify(body.origin === "waitlist" ? "The waitlist offer expired: the seats went to the next person." : "Your hold expired and the seats went back on sale.", "error");
          if (body.origin === "waitlist") setEntry(null);
        }
      } catch (p) {
        fail(p);
      }
      renderSide();
    };
    check();
  }

  async function pay(token, button) {
    const r = state.reservation;
    await act(button, async () => {
      try {
        const { status, body } = await call("POST", `/v1/reservations/${encodeURIComponent(r.reservation_id)}/checkout?wait_seconds=10`, {
          body: { payment_token: token },
          idempotencyKey: `${r.reservation_id}-${token}-${newKey()}`,
        });
        if (status === 200 && body.order_id) {
          await showOrder(body.order_id);
          if (r.origin === "waitlist") setEntry(null);
          notify("Payment received. Your tickets are below.", "ok");
          return;
        }
        state.reservation = body;
        notify("Your payment is being processed…");
        await waitForPayment(r.reservation_id);
      } catch (p) {
        if (p.code === "payment_declined" || p.code === "hold_expired") {
          setReservation(null);
          state.expired = null;
        } else if (p.code === "reservation_not_held") {
          const { body } = await call("GET", `/v1/reservations/${encodeURIComponent(r.reservation_id)}`);
          if (body.status === "confirmed" && body.order_id) {
            await showOrder(body.order_id);
            return;
          }
          if (body.status !== "held" && body.status !== "payment_pending") setReservation(null);
        }
        throw p;
      }
    });
  }

  async function waitForPayment(id) {
    const deadline = Date.now() + 60000;
    while (Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      const { body } = await call("GET", `/v1/reservations/${encodeURIComponent(id)}`);
      if (body.status === "confirmed" && body.order_id) {
        await showOrder(body.order_id);
        notify("Payment received. Your tickets are below.", "ok");
        return;
      }
      if (body.status !== "payment_pending") {
        setReservation(null);
        notify(body.status === "payment_failed" ? messageFor({ code: "payment_declined", body: {} }) : `The payment did not go through (${body.status.replace(/_/g, " ")}).`, "error");
        return;
      }
    }
    notify("The payment is still being processed. Reload the page in a minute to see it.");
  }

  async function cancelHold(button) {
    const r = state.reservation;
    await act(button, async () => {
      await call("DELETE", `/v1/reservations/${encodeURIComponent(r.reservation_id)}`);
      setReservation(null);
      if (r.origin === "waitlist") setEntry(null);
      notify("Hold cancelled; the seats are back on sale.");
    });
  }

  let entryTimer = null;
  let entryChecking = false;
  onLeave(() => clearTimeout(entryTimer));
  async function checkEntry() {
    if (!state.entry || entryChecking) return;
    entryChecking = true;
    clearTimeout(entryTimer);
    try {
      const { body } = await call("GET", `/v1/waitlist/${encodeURIComponent(state.entry.entry_id)}`);
      const was = state.entry;
      if (body.status === "offered" && body.offer && !state.reservation) {
        const { body: r } = await call("GET", `/v1/reservations/${encodeURIComponent(body.offer.reservation_id)}`);
        state.entry = body;
        if (r.status === "held") {
          state.expired = null;
          setReservation(r);
          notify("Good news: seats were released for you. Claim them before the countdown ends.", "ok");
        }
      } else if (body.status === "waiting") {
        state.entry = body;
      } else if (body.status !== "offered") {
        setEntry(null);
        if (body.status === "expired") notify("Your waitlist offer expired.", "error");
      }
      if (was.status !== body.status || was.position !== body.position) renderSide();
    } catch (p) {
      if (p.code === "waitlist_entry_not_found") setEntry(null);
    } finally {
      entryChecking = false;
      if (state.entry && state.entry.status === "waiting") entryTimer = setTimeout(checkEntry, WAITLIST_POLL_MS);
    }
  }

  function renderSide() {
    stopCountdown();
    stopCountdown = () => {};
    const panels = [];
    if (!session()) {
      panels.push(authCard(() => route(), "Sign in to hold seats, pay and see your tickets."));
    } else if (state.order) {
      panels.push(orderPanel());
    } else if (state.reservation) {
      panels.push(holdPanel());
    } else {
      if (state.expired) panels.push(expiredPanel());
      if (state.entry) panels.push(waitingPanel());
      else if (state.soldOut) panels.push(joinWaitlistPanel());
      else if (loaded) panels.push(...choosePanels());
    }
    side.replaceChildren(...panels);
  }

  function choosePanels() {
    const selected = [...map.selected].map((id) => map.seats.get(id));
    const total = selected.reduce((n, s) => n + minor(s.price.amount), 0);
    const holdButton = h("button", { type: "button", id: "hold-button", disabled: !selected.length,
      onclick: (e) => hold({ seats: [...map.selected] }, e.currentTarget) },
      selected.length ? `Hold ${selected.length} seat${selected.length > 1 ? "s" : ""}` : "Hold seats");
    const panels = [
      h("section", { class: "card", id: "choose", "aria-labelledby": "choose-title" },
        h("h2", { id: "choose-title" }, "Choose seats"),
        h("p", { class: "muted" }, "Click seats on the map, or Tab to the map, move with the arrow keys and press Space to choose."),
        selected.length
          ? h("ul", { class: "selection-list", id: "selection" }, selected.map((s) => h("li", {}, `Row ${s.row} seat ${s.number} · ${money(s.price)}`)))
          : h("p", { id: "selection" }, "No seats chosen yet."),
        selected.length ? h("p", {}, h("strong", {}, `Total ${fromMinor(total)} ${show.currency}`)) : null,
        h("div", { class: "row" }, holdButton,
          selected.length ? h("button", { type: "button", class: "secondary", onclick: () => { map.clearSelection(); renderSide(); } }, "Clear") : null),
      ),
    ];
    const seated = show.sections.filter((s) => s.kind === "seated");
    if (seated.length) {
      const section = h("select", { id: "best-section" }, seated.map((s) => h("option", { value: s.id }, s.name)));
      const qty = h("select", { id: "best-qty" }, Array.from({ length: maxPerHold }, (_, i) => h("option", { value: i + 1 }, i + 1)));
      panels.push(h("section", { class: "card", "aria-labelledby": "best-title" },
        h("h2", { id: "best-title" }, "Best available"),
        h("div", { class: "row" },
          h("label", {}, "Section", section),
          h("label", {}, "Seats", qty),
          h("button", { type: "button", id: "best-button", onclick: (e) => hold({ section: section.value, quantity: Number(qty.value), best_available: true }, e.currentTarget) }, "Find seats"),
        ),
      ));
    }
    for (const s of show.sections.filter((x) => x.kind === "general_admission")) {
      const ga = map.ga.get(s.id);
      if (!ga) continue;
      const max = Math.min(maxPerHold, ga.available);
      const qty = h("input", { id: `ga-qty-${s.id}`, type: "number", min: 1, max: Math.max(1, max), value: 1, inputmode: "numeric" });
      panels.push(h("section", { class: "card", "aria-labelledby": `ga-title-${s.id}` },
        h("h2", { id: `ga-title-${s.id}` }, s.name),
        h("p", {}, ga.available ? `General admission (no seat numbers): ${ga.available} places left, ${money(ga.price)} each.` : "Sold out."),
        ga.available ? h("div", { class: "row" },
          h("label", {}, "Places", qty),
          h("button", { type: "button", id: `ga-hold-${s.id}`, onclick: (e) => hold({ section: s.id, quantity: Number(qty.value) }, e.currentTarget) }, "Hold places"),
        ) : null,
      ));
    }
    return panels;
  }

  function holdPanel() {
    const r = state.reservation;
    const offer = r.origin === "waitlist";
    const timer = h("span", { class: "countdown", id: "countdown", role: "timer" });
    const token = h("select", { id: "card-token" },
      h("option", { value: "tok_visa" }, "Test Visa (succeeds)"),
      h("option", { value: "tok_declined" }, "Test card that is declined"),
      h("option", { value: "tok_dup_visa" }, "Test Visa, duplicate webhooks"),
      h("option", { value: "tok_timeout" }, "Test card that never settles"),
    );
    const pending = r.status === "payment_pending";
    const panel = h("section", { class: "card hold", id: "hold-panel", "aria-labelledby": "hold-title", "data-status": r.status, "data-origin": r.origin },
      h("h2", { id: "hold-title" }, offer ? "Your waitlist offer" : "Your hold"),
      offer ? h("p", {}, "Seats were released for you from the waitlist. Claim them by paying before the countdown ends.") : null,
      h("ul", { class: "selection-list", id: "held-seats" }, seatNames(map, r).map((n) => h("li", {}, n))),
      h("p", {}, "Total ", h("strong", { id: "hold-total" }, money(r.total))),
      pending
        ? h("p", {}, "Your payment is being processed…")
        : h("p", {}, offer ? "Claim within " : "Held for ", timer),
      pending ? null : h("form", { class: "row", onsubmit: (e) => { e.preventDefault(); pay(token.value, document.getElementById("pay-button")); } },
        h("label", {}, "Card (test token)", token),
        h("button", { type: "submit", id: "pay-button" }, `Pay ${money(r.total)}`),
      ),
      pending ? null : h("p", {}, h("button", { type: "button", class: "danger", id: "cancel-hold", onclick: (e) => cancelHold(e.currentTarget) }, offer ? "Decline the offer" : "Cancel hold")),
    );
    if (!pending) stopCountdown = countdown(timer, r.expires_at, holdTimeUp);
    return panel;
  }

  function expiredPanel() {
    const r = state.expired;
    return h("section", { class: "card hold expired", id: "hold-expired", "aria-labelledby": "expired-title", "data-status": r.status },
      h("h2", { id: "expired-title" }, r.origin === "waitlist" ? "Offer expired" : "Hold expired"),
      h("p", {}, `Your hold on ${seatNames(map, r).join(", ")} ${r.status === "cancelled" ? "was cancelled" : "expired"}; the seats went back on sale.`),
      h("button", { type: "button", class: "secondary", onclick: () => { state.expired = null; renderSide(); } }, "Choose again"),
    );
  }

  function orderPanel() {
    const o = state.order;
    const tickets = h("ul", { class: "tickets", id: "tickets" });
    for (const t of o.tickets) {
      const img = h("img", { alt: `QR code of the ticket for ${t.seat || t.section}`, width: 140, height: 140 });
      imageUrl(`/v1/orders/${encodeURIComponent(o.order_id)}/tickets/${encodeURIComponent(t.ticket_id)}/qr.svg`)
        .then((url) => { img.src = url; onLeave(() => URL.revokeObjectURL(url)); })
        .catch(() => { img.alt = "The QR code could not be loaded; show the code below instead."; });
      const seat = t.seat ? map.seats.get(t.seat) : null;
      tickets.append(h("li", { dataset: { ticket: t.ticket_id } },
        h("strong", {}, seat ? `Row ${seat.row} seat ${seat.number}` : t.seat || map.sectionName.get(t.section) || t.section),
        img,
        h("code", {}, t.code),
      ));
    }
    return h("section", { class: "card", id: "order", "aria-labelledby": "order-title", "data-status": o.status },
      h("h2", { id: "order-title" }, o.status === "refunded" ? "Order refunded" : "Your tickets"),
      h("p", {}, `Order ${o.order_id} · ${money(o.total)} · paid ${when(o.paid_at)}`),
      tickets,
      h("button", { type: "button", class: "secondary", id: "buy-more", onclick: () => {
        state.order = null;
        localStorage.removeItem(stored("rsv", show.show_id));
        renderSide();
      } }, "Buy more tickets"),
    );
  }

  function joinWaitlistPanel() {
    const qty = h("select", { id: "waitlist-qty" }, Array.from({ length: maxPerHold }, (_, i) => h("option", { value: i + 1 }, i + 1)));
    const section = h("select", { id: "waitlist-section" }, h("option", { value: "" }, "Any section"), show.sections.map((s) => h("option", { value: s.id }, s.name)));
    return h("section", { class: "card", id: "waitlist-join", "aria-labelledby": "wl-title" },
      h("h2", { id: "wl-title" }, "Sold out: join the waitlist"),
      h("p", {}, "Every seat is held or sold. Join the waitlist and we will offer you seats right here as soon as some are released."),
      h("div", { class: "row" },
        h("label", {}, "Seats", qty),
        h("label", {}, "Section", section),
        h("button", { type: "button", id: "join-waitlist", onclick: (e) => act(e.currentTarget, async () => {
          const body = { quantity: Number(qty.value) };
          if (section.value) body.section = section.value;
          const { body: entry } = await call("POST", `/v1/shows/${encodeURIComponent(show.show_id)}/waitlist`, { body });
          setEntry(entry);
          notify(`You are on the waitlist, number ${entry.position}.`, "ok");
          checkEntry();
        }) }, "Join the waitlist"),
      ),
    );
  }

  function waitingPanel() {
    const e = state.entry;
    return h("section", { class: "card", id: "waitlist-panel", "aria-labelledby": "wait-title", "data-status": e.status },
      h("h2", { id: "wait-title" }, "You are on the waitlist"),
      h("p", {}, "Your position: ", h("strong", { id: "waitlist-position" }, String(e.position))),
      h("p", { class: "muted" }, "Keep this page open: an offer appears here, with the time you have to claim it."),
      h("button", { type: "button", class: "danger", id: "leave-waitlist", onclick: (ev) => act(ev.currentTarget, async () => {
        await call("DELETE", `/v1/waitlist/${encodeURIComponent(e.entry_id)}`);
        setEntry(null);
        notify("You left the waitlist.");
      }) }, "Leave the waitlist"),
    );
  }

  await restore();
  renderSide();
  if (state.entry) checkEntry();
}

// --- Organizer: the live sales dashboard ---------------------------------------------

async function dashboard(showId) {
  main.replaceChildren(h("p", { class: "muted" }, "Loading the show…"));
  const show = await loadShow(showId);
  if (!show) return;
  document.title = `Sales · ${show.name} · Boxoffice`;
  const buyerLink = link(`/shows/${encodeURIComponent(show.show_id)}`, "Buyer page");
  if (!session()) {
    main.replaceChildren(showHeader(show, buyerLink), authCard(() => route(), "The sales dashboard is for the show's organizer (and auditors). Sign in with that account."));
    return;
  }
  const stat = (id, name) => h("div", { class: "stat", id: `stat-${id}` }, h("div", { class: "value" }, "–"), h("div", { class: "name" }, name));
  const stats = h("div", { class: "stats", "aria-live": "polite" },
    stat("sold", "Tickets sold"), stat("held", "Held now"), stat("available", "Available"),
    stat("revenue", "Net revenue"), stat("rate", "Holds per second"), stat("waitlist", "Waiting list"));
  const tiers = h("tbody", { id: "tiers" });
  const holds = h("tbody", { id: "holds" });
  const live = h("span", { class: "live", "data-state": "connecting" }, "Connecting…");
  const updated = h("p", { class: "muted", id: "updated" });
  const map = new SeatMap(show, { interactive: false });
  main.replaceChildren(
    showHeader(show, buyerLink),
    h("div", { class: "row spread" }, h("h2", {}, "Live sales"), live),
    stats,
    h("div", { class: "layout wide-side" },
      h("section", { class: "card", "aria-labelledby": "map-title" }, h("h2", { id: "map-title" }, "Seat map"), map.root, legend(show, map.tierColour, { selection: false })),
      h("div", {},
        h("section", { class: "card", "aria-labelledby": "tiers-title" }, h("h2", { id: "tiers-title" }, "Revenue by tier"),
          h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Tier"), h("th", { class: "num" }, "Price"), h("th", { class: "num" }, "Sold"), h("th", { class: "num" }, "Revenue"))), tiers)),
        h("section", { class: "card", "aria-labelledby": "holds-title" }, h("h2", { id: "holds-title" }, "Holds"),
          h("table", {}, holds)),
        updated,
      ),
    ),
  );
  const set = (id, value) => { document.querySelector(`#stat-${id} .value`).textContent = value; };
  let sales = null;
  let loaded = false;
  const samples = [];
  const render = () => {
    if (!loaded) return;
    const c = map.counts();
    let gaSold = 0;
    if (sales) {
      for (const line of sales.by_section) {
        if (map.ga.has(line.id)) gaSold += line.tickets_sold - line.tickets_refunded;
      }
    }
    set("available", String(c.available));
    set("held", String(Math.max(0, c.held + c.gaTaken - gaSold)));
    if (!sales) return;
    set("sold", String(sales.tickets_sold - sales.tickets_refunded));
    set("revenue", money(sales.net_revenue));
    set("waitlist", String(sales.waitlist.size));
    const first = samples[0];
    const last = samples[samples.length - 1];
    const seconds = first && last ? (last.t - first.t) / 1000 : 0;
    set("rate", seconds >= 1 ? ((last.created - first.created) / seconds).toFixed(1) : "0.0");
    tiers.replaceChildren(...show.price_tiers.map((t) => {
      const line = sales.by_tier.find((l) => l.id === t.id);
      return h("tr", { dataset: { tier: t.id } }, h("td", {}, t.name), h("td", { class: "num" }, money(t.price)),
        h("td", { class: "num" }, String(line ? line.tickets_sold - line.tickets_refunded : 0)),
        h("td", { class: "num" }, line ? money(line.revenue) : `0.00 ${show.currency}`));
    }));
    const hl = sales.holds;
    holds.replaceChildren(...[
      ["Created", hl.created], ["Open now", hl.open], ["Paid", hl.converted], ["Expired", hl.expired],
      ["Cancelled", hl.cancelled], ["Payment failed", hl.payment_failed + hl.payment_timed_out],
    ].map(([name, n]) => h("tr", { dataset: { hold: name.toLowerCase().replace(/ /g, "-") } }, h("td", {}, name), h("td", { class: "num" }, String(n)))));
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  };
  let fetching = false;
  let again = false;
  const refresh = async () => {
    if (fetching) { again = true; return; }
    fetching = true;
    try {
      const { body } = await call("GET", `/v1/shows/${encodeURIComponent(show.show_id)}/sales`);
      sales = body;
      const now = Date.now();
      samples.push({ t: now, created: body.holds.created });
      while (samples.length > 2 && now - samples[0].t > 10000) samples.shift();
      render();
    } catch (p) {
      if (p.code === "forbidden" || p.status === 403) {
        notify("Only this show's organizer (or an auditor) can see its sales.", "error");
        clearInterval(timer);
      } else {
        fail(p);
      }
    } finally {
      fetching = false;
      if (again) { again = false; setTimeout(refresh, 300); }
    }
  };
  // The report is read at most about once a second while the show changes, and every few
  // seconds anyway (so the holds-per-second figure falls back to zero when it is quiet).
  let pending = null;
  const soon = () => { if (!pending) pending = setTimeout(() => { pending = null; refresh(); }, 400); };
  const timer = setInterval(refresh, 3000);
  onLeave(() => { clearInterval(timer); clearTimeout(pending); });
  follow(show.show_id, {
    status: live,
    onSnapshot: (m) => { map.load(m); loaded = true; render(); soon(); },
    onSeats: (e) => { if (loaded) { map.apply(e); render(); soon(); } },
  });
  refresh();
}

route();
