// The seat map drawn as SVG: sections, rows and seats coloured by status and tier, GA
// sections with their remaining count. Seats are focusable checkboxes: arrow keys move
// between seats (roving tabindex), Space or Enter selects. The map is redrawn from a
// snapshot and patched in place by the live stream's changes.

const SVG = "http://www.w3.org/2000/svg";
const SEAT_PITCH = 26;
const SEAT_RADIUS = 10;
const ROW_LABEL_WIDTH = 36;
const SECTION_GAP = 34;
const GA_HEIGHT = 70;

/**
 * Tier colours: each at least 4.5:1 against white (WCAG AA for text, above the 3:1
 * required for graphics), and told apart by the legend's names too, not by colour alone.
 */
export const TIER_COLOURS = ["#0b5cad", "#7b3fc4", "#1a7f37", "#a4410e", "#a0216b", "#0e6f78"];

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function statusWord(status) {
  return { available: "available", held: "held by someone", sold: "sold", blocked: "not for sale" }[status] || status;
}

export class SeatMap {
  /**
   * show: the show (`GET /v1/shows/{id}`), for names and tiers. options.interactive:
   * seats can be selected; options.onToggle(seatId) is called when one is toggled.
   */
  constructor(show, options = {}) {
    this.show = show;
    this.interactive = !!options.interactive;
    this.onToggle = options.onToggle || (() => {});
    this.onGa = options.onGa || (() => {});
    this.selected = new Set();
    this.seats = new Map(); // id → {status, tier, price, row, number, section, el}
    this.ga = new Map(); // section id → {capacity, available, el}
    this.tierColour = new Map(show.price_tiers.map((t, i) => [t.id, TIER_COLOURS[i % TIER_COLOURS.length]]));
    this.tierName = new Map(show.price_tiers.map((t) => [t.id, t.name]));
    this.sectionName = new Map(show.sections.map((s) => [s.id, s.name]));
    this.position = 0;
    this.root = document.createElement("div");
    this.root.className = "seatmap";
  }

  /** Draws the whole map from a seat-map document (a snapshot). */
  load(map) {
    this.position = map.position;
    this.seats.clear();
    this.ga.clear();
    const width = Math.max(
      360,
      ...map.sections.filter((s) => s.kind === "seated").map((s) => ROW_LABEL_WIDTH * 2 + Math.max(...s.rows.map((r) => r.seats.length)) * SEAT_PITCH),
    );
    const el = svg("svg", { role: "group", "aria-label": "Seat map", class: "map" });
    let y = 8;
    el.append(svg("rect", { x: width / 2 - 110, y, width: 220, height: 26, rx: 4, class: "stage" }));
    const stage = svg("text", { x: width / 2, y: y + 18, "text-anchor": "middle", class: "stage-label" });
    stage.textContent = "STAGE";
    el.append(stage);
    y += 26 + SECTION_GAP;
    for (const section of map.sections) {
      const title = svg("text", { x: width / 2, y, "text-anchor": "middle", class: "section-label" });
      title.textContent = this.sectionName.get(section.id) || section.id;
      el.append(title);
      y += 14;
      if (section.kind === "seated") {
        const group = svg("g", { role: "group", "aria-label": this.sectionName.get(section.id) || section.id });
        section.rows.forEach((row, r) => {
          const rowWidth = row.seats.length * SEAT_PITCH;
          const x0 = (width - rowWidth) / 2;
          const cy = y + SEAT_RADIUS + 4;
          const label = svg("text", { x: x0 - 12, y: cy + 4, "text-anchor": "end", class: "row-label", "aria-hidden": "true" });
          label.textContent = row.row;
          group.append(label);
          row.seats.forEach((seat, i) => {
            const number = seat.id.slice(seat.id.lastIndexOf("-") + 1);
            const g = svg("g", { class: "seat", "data-seat": seat.id, tabindex: -1 });
            g.append(svg("circle", { cx: x0 + i * SEAT_PITCH + SEAT_PITCH / 2, cy, r: SEAT_RADIUS }));
            const info = { ...seat, row: row.row, rowIndex: r, index: i, number, section: section.id, el: g };
            this.seats.set(seat.id, info);
            if (this.interactive) {
              g.setAttribute("role", "checkbox");
              g.addEventListener("click", () => this.toggle(seat.id));
              g.addEventListener("keydown", (e) => this.key(e, seat.id));
              g.addEventListener("focus", () => this.focusOn(seat.id));
            } else {
              g.setAttribute("role", "img");
            }
            group.append(g);
            this.paint(info);
          });
          y += SEAT_PITCH;
        });
        el.append(group);
        y += SECTION_GAP - 8;
      } else {
        const g = svg("g", { class: "ga", "data-section": section.id });
        g.append(svg("rect", { x: width / 2 - 150, y, width: 300, height: GA_HEIGHT - 16, rx: 8 }));
        const text = svg("text", { x: width / 2, y: y + 33, "text-anchor": "middle", class: "ga-label" });
        g.append(text);
        if (this.interactive) {
          g.setAttribute("role", "button");
          g.setAttribute("tabindex", 0);
          g.addEventListener("click", () => this.onGa(section.id));
          g.addEventListener("keydown", (e) => {
            if (e.key === "Enter" || e.key === " ") {
              e.preventDefault();
              this.onGa(section.id);
            }
          });
        }
        const info = { capacity: section.capacity, available: section.available, tier: section.tier, price: section.price, el: g, text };
        this.ga.set(section.id, info);
        this.paintGa(section.id, info);
        el.append(g);
        y += GA_HEIGHT + SECTION_GAP - 16;
      }
    }
    el.setAttribute("viewBox", `0 0 ${width} ${y}`);
    // Drawn larger than its units on a wide screen (up to 1.5×), never wider than the card.
    el.style.maxWidth = `${Math.round(width * 1.5)}px`;
    this.root.replaceChildren(el);
    // Selected seats that are no longer available are dropped (someone else got them).
    const lost = [];
    for (const id of this.selected) {
      const seat = this.seats.get(id);
      if (!seat || seat.status !== "available") {
        this.selected.delete(id);
        lost.push(id);
      } else {
        this.paint(seat);
      }
    }
    this.resetTabStop();
    return lost;
  }

  /** Applies one `seats` event; returns the selected seats that someone else took. */
  apply(event) {
    if (event.position <= this.position) return [];
    this.position = event.position;
    const lost = [];
    for (const change of event.changes) {
      if (change.id !== undefined) {
        const seat = this.seats.get(change.id);
        if (!seat) continue;
        seat.status = change.status;
        if (change.status !== "available" && this.selected.delete(change.id)) lost.push(change.id);
        this.paint(seat);
      } else if (change.section !== undefined) {
        const ga = this.ga.get(change.section);
        if (!ga) continue;
        ga.available = change.available;
        this.paintGa(change.section, ga);
      }
    }
    if (lost.length) this.resetTabStop();
    return lost;
  }

  label(seat) {
    const tier = this.tierName.get(seat.tier) || seat.tier;
    const section = this.sectionName.get(seat.section) || seat.section;
    return `Row ${seat.row} seat ${seat.number}, ${section}, tier ${tier}, ${seat.price.amount} ${seat.price.currency}, ${statusWord(seat.status)}`;
  }

  paint(seat) {
    const g = seat.el;
    const selected = this.selected.has(seat.id);
    g.dataset.status = seat.status;
    g.setAttribute("class", `seat ${seat.status}${selected ? " selected" : ""}`);
    g.style.setProperty("--tier", this.tierColour.get(seat.tier) || "#0b5cad");
    g.setAttribute("aria-label", this.label(seat));
    if (this.interactive) {
      g.setAttribute("aria-checked", selected ? "true" : "false");
      g.setAttribute("aria-disabled", seat.status === "available" ? "false" : "true");
    }
    let title = g.querySelector("title");
    if (!title) {
      title = svg("title");
      g.append(title);
    }
    title.textContent = this.label(seat);
  }

  paintGa(id, ga) {
    const name = this.sectionName.get(id) || id;
    ga.el.dataset.available = ga.available;
    ga.el.setAttribute("class", `ga${ga.available === 0 ? " sold-out" : ""}`);
    const price = ga.price ? ` · ${ga.price.amount} ${ga.price.currency}` : "";
    ga.text.textContent = ga.available === 0 ? `${name}: sold out` : `${name}: ${ga.available} of ${ga.capacity} left${price}`;
    ga.el.setAttribute("aria-label", `${ga.text.textContent}, general admission${this.interactive && ga.available ? "; choose a quantity" : ""}`);
  }

  toggle(id) {
    const seat = this.seats.get(id);
    if (!seat) return;
    if (seat.status !== "available" && !this.selected.has(id)) {
      this.onToggle(id, false, `Row ${seat.row} seat ${seat.number} is ${statusWord(seat.status)}.`);
      return;
    }
    const on = !this.selected.has(id);
    if (on && !this.onToggle(id, true)) return;
    if (on) this.selected.add(id);
    else {
      this.selected.delete(id);
      this.onToggle(id, false);
    }
    this.paint(seat);
  }

  clearSelection() {
    const ids = [...this.selected];
    this.selected.clear();
    for (const id of ids) {
      const seat = this.seats.get(id);
      if (seat) this.paint(seat);
    }
  }

  /** Rows as arrays of seat ids, for keyboard moves. */
  grid(section) {
    const rows = [];
    for (const seat of this.seats.values()) {
      if (seat.section !== section) continue;
      (rows[seat.rowIndex] ||= [])[seat.index] = seat.id;
    }
    return rows;
  }

  key(e, id) {
    const seat = this.seats.get(id);
    const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
    if (e.key === " " || e.key === "Enter") {
      e.preventDefault();
      this.toggle(id);
      return;
    }
    let target = null;
    const grid = this.grid(seat.section);
    if (moves[e.key]) {
      const [dr, dc] = moves[e.key];
      const row = grid[seat.rowIndex + dr];
      if (row) target = row[Math.min(row.length - 1, Math.max(0, seat.index + dc))];
    } else if (e.key === "Home") {
      target = grid[seat.rowIndex][0];
    } else if (e.key === "End") {
      const row = grid[seat.rowIndex];
      target = row[row.length - 1];
    } else {
      return;
    }
    e.preventDefault();
    if (target) this.focusSeat(target);
  }

  focusSeat(id) {
    const seat = this.seats.get(id);
    if (!seat) return;
    this.focusOn(id);
    seat.el.focus();
  }

  /** Makes `id` the one seat reached with Tab. */
  focusOn(id) {
    if (this.tabStop === id) return;
    const old = this.seats.get(this.tabStop);
    if (old) old.el.setAttribute("tabindex", -1);
    this.tabStop = id;
    this.seats.get(id)?.el.setAttribute("tabindex", 0);
  }

  resetTabStop() {
    if (!this.interactive) return;
    if (this.tabStop && this.seats.has(this.tabStop)) {
      this.seats.get(this.tabStop).el.setAttribute("tabindex", 0);
      return;
    }
    const first = [...this.seats.values()].find((s) => s.status === "available") || this.seats.values().next().value;
    if (first) this.focusOn(first.id);
  }

  /** Counts by status, GA places included: {available, held_or_sold, blocked, seats, capacity}. */
  counts() {
    const c = { available: 0, held: 0, sold: 0, blocked: 0, capacity: 0, gaTaken: 0 };
    for (const seat of this.seats.values()) {
      c[seat.status] = (c[seat.status] || 0) + 1;
      c.capacity += 1;
    }
    for (const ga of this.ga.values()) {
      c.available += ga.available;
      c.capacity += ga.capacity;
      c.gaTaken += ga.capacity - ga.available;
    }
    return c;
  }

  soldOut() {
    const c = this.counts();
    return c.capacity > 0 && c.available === 0;
  }
}

/** The legend: the tiers with their prices, and what each status looks like. */
export function legend(show, colours, { selection = true } = {}) {
  const ul = document.createElement("ul");
  ul.className = "legend";
  const item = (cls, colour, text) => {
    const li = document.createElement("li");
    const swatch = svg("svg", { width: 22, height: 22, viewBox: "0 0 22 22", "aria-hidden": "true" });
    const g = svg("g", { class: `seat ${cls}` });
    g.style.setProperty("--tier", colour);
    g.append(svg("circle", { cx: 11, cy: 11, r: 8 }));
    swatch.append(g);
    li.append(swatch, document.createTextNode(text));
    ul.append(li);
  };
  show.price_tiers.forEach((t) => item("available", colours.get(t.id), `${t.name}: ${t.price.amount} ${t.price.currency}`));
  const first = colours.get(show.price_tiers[0]?.id) || "#0b5cad";
  if (selection) item("available selected", first, "Your selection");
  item("held", first, "Held by someone");
  item("sold", first, "Sold");
  item("blocked", first, "Not for sale");
  return ul;
}
