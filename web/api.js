// The JSON API as the page uses it: requests with the signed-in user's token, an
// idempotency key on every POST, and a plain-language message for every problem the
// API can answer (never the raw JSON).

const TOKEN_KEY = "boxoffice.session";

/** An error answered by the API (a problem document) or by the network. */
export class Problem extends Error {
  constructor(status, body, retryAfter) {
    super(body?.detail || body?.title || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code || (status === 0 ? "network" : "unknown");
    this.body = body || {};
    this.retryAfter = retryAfter;
  }
}

/** The signed-in session, or null: {token, email, roles, expiresAt}. */
export function session() {
  try {
    const s = JSON.parse(localStorage.getItem(TOKEN_KEY) || "null");
    if (s && s.expiresAt > Date.now()) return s;
  } catch (_) {
    // A damaged entry is treated as signed out.
  }
  return null;
}

export function signOut() {
  localStorage.removeItem(TOKEN_KEY);
  window.dispatchEvent(new Event("session"));
}

export function hasRole(role) {
  const s = session();
  return !!s && (s.roles.includes(role) || s.roles.includes("admin"));
}

/** The roles a token carries, read from its payload (the page's own token). */
function rolesOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).roles || [];
  } catch (_) {
    return [];
  }
}

/** Difference between the server's clock and ours, in ms, from the last `Date` header. */
let clockOffsetMs = 0;
export function serverNow() {
  return Date.now() + clockOffsetMs;
}

/**
 * Sends one request. `body` is sent as JSON; POSTs get a fresh idempotency key unless
 * one is given. Resolves to the parsed body (null when empty); rejects with a Problem.
 */
export async function call(method, path, { body, idempotencyKey, auth = true } = {}) {
  const headers = { Accept: "application/json" };
  const s = session();
  if (auth && s) headers.Authorization = `Bearer ${s.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method === "POST") headers["Idempotency-Key"] = idempotencyKey || newKey();
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (_) {
    throw new Problem(0, null);
  }
  const date = Date.parse(response.headers.get("Date") || "");
  if (!Number.isNaN(date)) {
    // `Date` has whole seconds: correct only a clock that is clearly off.
    const offset = date + 500 - Date.now();
    clockOffsetMs = Math.abs(offset) > 2000 ? offset : 0;
  }
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch (_) {
    parsed = null;
  }
  if (!response.ok) {
    if (response.status === 401 && auth && s) signOut();
    throw new Problem(response.status, parsed, response.headers.get("Retry-After"));
  }
  return { status: response.status, body: parsed };
}

/** Fetches an image the API serves behind the token and returns an object URL for it. */
export async function imageUrl(path) {
  const s = session();
  const response = await fetch(path, {
    headers: s ? { Authorization: `Bearer ${s.token}` } : {},
  });
  if (!response.ok) throw new Problem(response.status, null);
  return URL.createObjectURL(await response.blob());
}

export function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return `${Date.now()}-${Math.random().toString(16).slice(2)}`;
}

export async function signIn(email, password) {
  const { body } = await call("POST", "/v1/auth/token", {
    body: { email, password },
    auth: false,
  });
  const s = {
    token: body.access_token,
    email,
    roles: rolesOf(body.access_token),
    expiresAt: Date.now() + (body.expires_in - 30) * 1000,
  };
  localStorage.setItem(TOKEN_KEY, JSON.stringify(s));
  window.dispatchEvent(new Event("session"));
  return s;
}

export async function register(email, password, displayName) {
  await call("POST", "/v1/auth/register", {
    body: { email, password, display_name: displayName || undefined },
    auth: false,
  });
  return signIn(email, password);
}

function seatName(id) {
  // Seat ids are `{section}-{row}-{number}`; sections and rows may hold dashes too.
  const parts = String(id).split("-");
  if (parts.length < 3) return id;
  const number = parts.pop();
  const row = parts.pop();
  return `row ${row} seat ${number} (section ${parts.join("-")})`;
}

function list(items) {
  const names = items.map(seatName);
  if (names.length <= 1) return names.join("");
  return `${names.slice(0, -1).join(", ")} and ${names[names.length - 1]}`;
}

/** What to tell a person about a problem: one or two plain sentences. */
export function messageFor(problem) {
  const b = problem.body || {};
  switch (problem.code) {
    case "network":
      return "Cannot reach Boxoffice. Check your connection and try again.";
    case "seats_unavailable":
      if (Array.isArray(b.unavailable) && b.unavailable.length) {
        return `Sorry, ${list(b.unavailable)} ${b.unavailable.length > 1 ? "were" : "was"} just taken by someone else. Please pick other seats.`;
      }
      return "Sorry, those seats are no longer available (or there are not that many seats side by side). Please pick other seats.";
    case "sold_out":
      return `Sorry, that section is sold out${b.available ? ` (only ${b.available} left)` : ""}.`;
    case "sales_closed":
      return "Sales for this show are closed.";
    case "ticket_limit_exceeded":
      return `You can have at most ${b.limit} tickets for this show; you already hold or bought ${b.current}, so ${b.requested} more would be too many.`;
    case "hold_limit_exceeded":
      return `You already have ${b.limit} holds open for this show. Check out or cancel one first.`;
    case "hold_expired":
      return "Your hold expired and the seats went back on sale. Please choose again.";
    case "payment_declined":
      return "Your card was declined, so the seats were released. Please choose seats again and use another card.";
    case "reservation_not_held":
      return "This reservation can no longer be changed: it is being paid, already paid, or cancelled.";
    case "reservation_not_found":
      return "That reservation no longer exists.";
    case "order_not_found":
      return "That order was not found.";
    case "ticket_not_found":
      return "That ticket was not found.";
    case "show_not_found":
      return "That show was not found.";
    case "invalid_credentials":
      return "Wrong email or password.";
    case "email_taken":
      return "An account with this email already exists. Sign in instead.";
    case "validation_failed":
      if (Array.isArray(b.errors) && b.errors.length) {
        return `Please check: ${b.errors.map((e) => `${e.field.replace(/_/g, " ")} ${e.message}`).join("; ")}.`;
      }
      return "Some of what you entered is not valid. Please check it.";
    case "unauthorized":
      return "Please sign in (your session may have expired).";
    case "forbidden":
      return "Your account is not allowed to do that.";
    case "rate_limited":
      return `Too many requests. Please wait ${problem.retryAfter || "a few"} seconds.`;
    case "seats_available":
      return "Seats are available right now, so there is no waitlist. Pick seats on the map instead.";
    case "already_waiting":
      return "You are already on the waitlist for this show.";
    case "waitlist_entry_not_found":
      return "That waitlist entry no longer exists.";
    case "waitlist_entry_closed":
      return "That waitlist entry is already closed (claimed, expired or left).";
    case "idempotency_key_reused":
      return "That request was already sent with other details. Please try again.";
    case "payment_conflict":
    case "payment_provider_error":
    case "payment_provider_unavailable":
      return "The payment could not be processed just now. Please try again in a moment.";
    case "overloaded":
    case "service_unavailable":
    case "show_unavailable":
    case "not_ready":
    case "conflict":
      return "Boxoffice is very busy right now. Please try again in a moment.";
    case "internal_error":
      return "Something went wrong on our side. Please try again.";
    default:
      return b.detail || b.title || `Something went wrong (HTTP ${problem.status}).`;
  }
}
