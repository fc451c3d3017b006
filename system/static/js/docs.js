// GET /docs: render /openapi.json with Swagger UI (system/static/vendor/swagger-ui).
window.addEventListener("DOMContentLoaded", () => {
  window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger",
    deepLinking: true,
    defaultModelsExpandDepth: 0,
  });
});
