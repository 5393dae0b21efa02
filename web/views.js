// Small DOM helpers shared by the page's views.

import { serverNow } from "./api.js";

/** Builds an element: h("button", {class: "x", onclick: f}, "text", child…). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** "120.00 EUR" from a Money object. */
export function money(m) {
  return m ? `${m.amount} ${m.currency}` : "";
}

/** A decimal string in minor units ("120.50" → 12050); amounts are never floats. */
export function minor(amount) {
  const [whole, frac = ""] = String(amount).split(".");
  const sign = whole.startsWith("-") ? -1 : 1;
  return sign * (Math.abs(parseInt(whole, 10)) * 100 + parseInt((frac + "00").slice(0, 2), 10));
}

export function fromMinor(cents) {
  const sign = cents < 0 ? "-" : "";
  const abs = Math.abs(cents);
  return `${sign}${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, "0")}`;
}

export function when(iso) {
  const d = new Date(iso);
  return d.toLocaleString(undefined, {
    weekday: "short",
    day: "numeric",
    month: "short",
    year: "numeric",
    hour: "2-digit",
    minute: "2-digit",
  });
}

/** "4:05" for a number of seconds. */
export function clock(seconds) {
  const s = Math.max(0, Math.ceil(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/**
 * A countdown to `expiresAt` (RFC 3339) written into `el`, with `onZero` called once
 * when it runs out. Returns a function that stops it.
 */
export function countdown(el, expiresAt, onZero) {
  const end = Date.parse(expiresAt);
  let fired = false;
  const tick = () => {
    const left = (end - serverNow()) / 1000;
    el.textContent = clock(left);
    el.setAttribute("aria-label", `${Math.max(0, Math.ceil(left))} seconds left`);
    if (left <= 0 && !fired) {
      fired = true;
      onZero?.();
    }
  };
  tick();
  const timer = setInterval(tick, 250);
  return () => clearInterval(timer);
}

let noticeTimer = null;

/** Shows a message in the page's live region (read out by screen readers). */
export function notify(text, kind = "info") {
  const el = document.getElementById("notice");
  el.textContent = text;
  el.dataset.kind = kind;
  el.hidden = false;
  clearTimeout(noticeTimer);
  if (kind === "info") noticeTimer = setTimeout(() => (el.hidden = true), 8000);
}

export function clearNotice() {
  const el = document.getElementById("notice");
  el.hidden = true;
  el.textContent = "";
}
