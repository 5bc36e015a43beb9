// Small behaviours the portal needs beyond htmx: confirmations, copy buttons, org switcher, select-all.
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
      return;
    }
    // A form that books something is sent once: a second click waits for the first answer. The server
    // does not rely on it (the form's one-time token makes a resend book nothing more).
    if (form.hasAttribute("data-submit-once") && !event.defaultPrevented) {
      form.querySelectorAll('button[type="submit"], input[type="submit"]').forEach(function (button) {
        button.disabled = true;
        button.setAttribute("aria-busy", "true");
      });
    }
  });

  // Back to a page kept in the browser's cache: its buttons work again (the form has a fresh token only
  // once reloaded, and the server answers a resend with the reservation already made).
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) { return; }
    document.querySelectorAll("form[data-submit-once] [aria-busy]").forEach(function (button) {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    });
  });

  function copyText(text, button) {
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      button.classList.add("copied");
      setTimeout(function () { button.textContent = label; button.classList.remove("copied"); }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text); done(); });
    } else {
      fallbackCopy(text);
      done();
    }
  }

  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } catch (e) { /* the text stays selectable on the page */ }
    document.body.removeChild(area);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) { return; }
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) { return; }
    // innerText, not textContent: lines shown as separate blocks (known_hosts) are copied as lines, each
    // ended by a newline (data-copy-lines) so that the text appends cleanly to a file.
    var text = source.innerText.trim();
    copyText(source.hasAttribute("data-copy-lines") ? text + "\n" : text, button);
  });

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target.matches("[data-autosubmit]")) {
      target.form.submit();
    }
    if (target.matches("[data-select-all]")) {
      var name = target.getAttribute("data-select-all");
      document.querySelectorAll('input[type=checkbox][name="' + name + '"]').forEach(function (box) {
        box.checked = target.checked;
      });
    }
  });

  // Reserve form: the start field only matters for a scheduled window.
  function syncWhen() {
    var later = document.querySelector('input[name="when"][value="later"]');
    var block = document.querySelector(".when-later");
    if (later && block) { block.hidden = !later.checked; }
  }
  document.addEventListener("change", function (event) {
    if (event.target.name === "when") { syncWhen(); }
  });
  document.addEventListener("DOMContentLoaded", syncWhen);
})();
