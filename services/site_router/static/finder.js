// The public site finder: asks the site router's public API (same origin) for the recruiting sites
// nearest a postal code and lists them. Every value from the server is written with textContent or
// as an attribute, never parsed as HTML.
"use strict";

(function () {
  const form = document.getElementById("finder");
  const country = document.getElementById("country");
  const postalCode = document.getElementById("postal-code");
  const button = document.getElementById("find");
  const results = document.getElementById("results");
  const heading = document.getElementById("results-heading");
  const message = document.getElementById("message");
  const list = document.getElementById("site-list");

  const API = form.dataset.api || "/v1/sites/nearby";
  const LIMIT = form.dataset.limit || "5";
  const TIMEOUT_MS = 15000;
  const EXAMPLES = {
    US: "10021", CA: "M5G 2C4", GB: "SW1A 1AA", DE: "10115", ES: "28001", IT: "00184",
    NL: "1012 AB", BE: "1000", CH: "8001", AT: "1010", AU: "2000",
  };
  const number = (digits) =>
    new Intl.NumberFormat("en", { minimumFractionDigits: digits, maximumFractionDigits: digits });

  let inFlight = null;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function countryName(code) {
    const option = Array.from(country.options).find((o) => o.value === code);
    return option ? option.textContent : code;
  }

  function distance(value, unit) {
    const n = Number(value);
    return `${number(n < 10 ? 1 : 0).format(n)} ${unit}`;
  }

  function clear() {
    heading.hidden = true;
    message.hidden = true;
    message.className = "message";
    message.replaceChildren();
    list.replaceChildren();
    postalCode.removeAttribute("aria-invalid");
  }

  function say(kind, title, ...lines) {
    message.className = `message ${kind}`;
    message.replaceChildren(el("strong", null, title));
    for (const line of lines) {
      if (line) message.append(el("span", "detail", line));
    }
    message.hidden = false;
  }

  function refuse(title, ...lines) {
    say("error", title, ...lines);
    postalCode.setAttribute("aria-invalid", "true");
    postalCode.focus();
  }

  function siteItem(site) {
    const item = el("li", "site");
    item.dataset.code = site.code;
    item.append(el("h3", "site-name", site.name));
    const place = [site.city, site.region, countryName(site.country)].filter(Boolean).join(", ");
    item.append(el("p", "site-place", place));

    const far = el("p", "site-distance");
    far.append(el("span", "km", distance(site.distance_km, "km")));
    far.append(el("span", "miles", `(${distance(site.distance_miles, "miles")})`));
    item.append(far);

    const contact = el("p", "site-contact");
    contact.append(el("span", "contact-label", "Contact the study centre: "));
    const email = site.contact && site.contact.email;
    const phone = site.contact && site.contact.phone;
    if (email) {
      const link = el("a", "email", email);
      link.href = `mailto:${email}`;
      contact.append(link);
    }
    if (phone) {
      if (email) contact.append(document.createTextNode(" · "));
      const link = el("a", "phone", phone);
      link.href = `tel:${String(phone).replace(/[^\d+]/g, "")}`;
      contact.append(link);
    }
    item.append(contact);
    return item;
  }

  function show(body) {
    const where = String(body.place || "").split(",")[0].trim();
    heading.textContent = `Study sites nearest ${body.postal_code}${where ? ` (${where})` : ""}`;
    heading.hidden = false;
    const sites = Array.isArray(body.sites) ? body.sites : [];
    if (sites.length === 0) {
      say("info", "No recruiting study site was found yet.", "Please check again later.");
      return;
    }
    const count = sites.length === 1 ? "1 study site" : `${sites.length} study sites`;
    say("info", `${count}, nearest first.`);
    list.replaceChildren(...sites.map(siteItem));
  }

  async function problemOf(response) {
    try {
      const body = await response.json();
      return body && typeof body === "object" ? body : {};
    } catch {
      return {};
    }
  }

  async function search(code, countryCode) {
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    const url = new URL(API, window.location.origin);
    url.search = new URLSearchParams({ postal_code: code, country: countryCode, limit: LIMIT }).toString();

    clear();
    results.setAttribute("aria-busy", "true");
    button.disabled = true;
    say("info", "Searching…");
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, signal: controller.signal });
      clear();
      if (response.ok) {
        show(await response.json());
      } else if (response.status === 422) {
        const problem = await problemOf(response);
        const fields = Array.isArray(problem.errors) ? problem.errors.map((e) => e && e.reason) : [];
        refuse(
          "We could not look up that code.",
          typeof problem.detail === "string" ? problem.detail : "",
          ...fields,
          "Check the code and the country, then try again.",
        );
      } else if (response.status === 429) {
        const wait = parseInt(response.headers.get("Retry-After") || "", 10);
        const when = wait > 0 ? `in ${wait} second${wait === 1 ? "" : "s"}` : "in a minute";
        say("warning", "Too many searches from your connection just now.", `Please try again ${when}.`);
      } else {
        say("error", "The study site finder is not available right now.", "Please try again later.");
      }
    } catch (error) {
      if (controller !== inFlight) return; // a newer search replaced this one
      clear();
      say("error", "The study site finder could not be reached.", "Please check your connection and try again.");
    } finally {
      clearTimeout(timer);
      if (controller === inFlight) {
        inFlight = null;
        button.disabled = false;
        results.setAttribute("aria-busy", "false");
      }
    }
  }

  function updateExample() {
    const example = EXAMPLES[country.value];
    postalCode.placeholder = example ? `e.g. ${example}` : "";
  }

  country.addEventListener("change", updateExample);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const code = postalCode.value.trim();
    if (!code) {
      clear();
      refuse("Enter your ZIP or postal code.");
      return;
    }
    search(code, country.value);
  });
  updateExample();
})();
