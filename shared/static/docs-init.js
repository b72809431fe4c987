// Starts Swagger UI on the service's own OpenAPI document. A file of its own, not an inline script, so
// the docs page works under a Content-Security-Policy of default-src 'self'. Nothing is fetched from
// another origin: the validator badge (which would call validator.swagger.io) is off.
"use strict";

window.addEventListener("DOMContentLoaded", function () {
  const root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: "#swagger-ui",
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    displayRequestDuration: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
  });
});
