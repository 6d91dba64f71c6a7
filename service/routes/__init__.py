"""Thin route modules: parse the request, call the service on app.state, shape the response."""
