// Served as a file (the CSP allows no inline script): ask before destructive help-desk actions.
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

// Adding a hardware token: show the second and third code fields only for HOTP tokens
// (without script every field stays visible and the server ignores the ones not needed).
function otpgateShowCodes(form) {
  var chosen = form.querySelector("input[name=kind]:checked");
  var kind = chosen ? chosen.value : "hotp";
  var fields = form.querySelectorAll("[data-kinds]");
  for (var i = 0; i < fields.length; i++) {
    var wanted = fields[i].getAttribute("data-kinds").split(" ").indexOf(kind) >= 0;
    var box = fields[i].closest(".field") || fields[i];
    box.hidden = !wanted;
  }
}
document.addEventListener("change", function (event) {
  if (event.target.name === "kind" && event.target.form) {
    otpgateShowCodes(event.target.form);
  }
});
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("claim-form");
  if (form) {
    otpgateShowCodes(form);
  }
});

// A page still being computed (the help desk's census): reload it after the seconds it names.
document.addEventListener("DOMContentLoaded", function () {
  var waiting = document.querySelector("[data-reload]");
  if (waiting) {
    var seconds = parseInt(waiting.getAttribute("data-reload"), 10) || 2;
    window.setTimeout(function () { window.location.reload(); }, seconds * 1000);
  }
});

// App passwords: the new one's copy button (shown only where the browser can copy).
document.addEventListener("DOMContentLoaded", function () {
  var button = document.querySelector("button[data-copy]");
  if (!button || !navigator.clipboard) {
    return;
  }
  button.hidden = false;
  button.addEventListener("click", function () {
    var source = document.getElementById(button.getAttribute("data-copy"));
    var said = document.getElementById("app-copied");
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      if (said) { said.textContent = "Copied."; }
    }, function () {
      if (said) { said.textContent = "Copy it by hand: select it and copy."; }
    });
  });
});
