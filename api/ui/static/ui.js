// recsys dashboard: the only script. Admin buttons call the existing /admin routes with the key
// typed next to them (sent as X-API-Key, never stored); pages work without it.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form[data-admin]")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const out = form.querySelector("output");
      const key = form.elements.key.value;
      out.textContent = "…";
      try {
        const response = await fetch(form.dataset.admin, {
          method: form.dataset.method || "POST",
          headers: { "X-API-Key": key },
        });
        const body = await response.json().catch(() => ({}));
        if (response.ok) {
          out.textContent = "done: serving " + JSON.stringify(body.served || body);
          setTimeout(() => location.reload(), 800);
        } else {
          const detail = body.detail || {};
          out.textContent = response.status + ": " + (detail.message || JSON.stringify(detail));
        }
      } catch (err) {
        out.textContent = "request failed: " + err;
      }
    });
  }
});
