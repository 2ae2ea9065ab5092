// The API's documentation page: Swagger UI over the API's own OpenAPI schema (its "Authorize" button takes a
// bearer token; requests it sends with only the session cookie need the CSRF token like any other, so they fail).
"use strict";

(() => {
  const root = document.getElementById("swagger-ui");
  window.SwaggerUIBundle({ url: root.dataset.openapi, domNode: root, deepLinking: true });
})();
